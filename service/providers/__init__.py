"""Model providers: what turns a prompt into a reply, with exact token counts for the charge.

The ledger prices a prompt before the call with `count_tokens` (the stored history carries each
message's count), then charges the provider's own usage after it (design.md section 4).
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class ChatTurn(msgspec.Struct, frozen=True):
    is_user: bool
    content: str


class CompletionRequest(msgspec.Struct, frozen=True, kw_only=True):
    system_prompt: str
    # Earlier messages, oldest first, already trimmed to the context budget.
    context: list[ChatTurn]
    user_content: str
    # Most reply tokens the hold can pay for: a provider must not generate more.
    max_tokens: int
    model: str = ""


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    content: str
    prompt_tokens: int
    completion_tokens: int
    # The reply stopped at max_tokens (or the client left): saved with the 't' flag.
    truncated: bool = False
    # The upstream gave no usage and the counts are the service's own estimate: saved with 'e'.
    estimated: bool = False


class ProviderError(Exception):
    """The model failed before a reply was complete; nothing is charged (502)."""

    code = "upstream_error"


class ProviderTimeout(ProviderError):
    """The model did not answer in time (504)."""

    code = "upstream_timeout"


class Provider(Protocol):
    name: str

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as this provider's model counts them (or the closest estimate)."""
        ...

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def close(self) -> None: ...


def provider_from_name(name: str) -> Provider:
    """The provider a setting names. Only the offline model exists yet (design.md section 8)."""
    from service.providers.offline import OfflineModel

    if name == "offline":
        return OfflineModel()
    raise ValueError(f"unknown provider {name!r}")
