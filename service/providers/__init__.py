"""Model providers: what turns a prompt into a reply, with exact token counts for the charge.

The ledger prices a prompt before the call with `count_tokens` (the stored history carries each
message's count), then charges the provider's own usage after it (design.md section 4). A provider
answers whole (`complete`) or streamed (`open_stream`); both paths of one prompt charge the same.

A model server is not trusted to keep the exchange's terms: usage that cannot be true is replaced by
the service's own count (`Usage` says what can be true), and a reply past `max_tokens` is cut at the
budget on the wire (`ReplyStream` for streams, `cut_to_budget` for whole replies).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Annotated, Protocol, cast, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from service.settings import Settings


class Turn(Protocol):
    """An earlier message as a provider reads it. The ledger's StoredMessage is one, so the exchange
    hands the reservation's context over as it is instead of copying 20 messages into new objects
    for every message."""

    @property
    def is_user(self) -> bool: ...

    @property
    def content(self) -> str: ...


class ChatTurn(msgspec.Struct, frozen=True):
    """A Turn made by hand (tests, callers without a stored history)."""

    is_user: bool
    content: str


class CompletionRequest(msgspec.Struct, frozen=True, kw_only=True):
    system_prompt: str
    # Earlier messages, oldest first, already trimmed to the context budget.
    context: Sequence[Turn]
    user_content: str
    # Most reply tokens the hold can pay for: a provider must not generate more.
    max_tokens: int
    # The config's model; empty means the provider's default.
    model: str = ""
    # The config's sampling temperature; None leaves it to the upstream.
    temperature: float | None = None


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    content: str
    prompt_tokens: int
    # As the model reported it, which may exceed max_tokens: the settle then charges the hold, no more.
    completion_tokens: int
    # The reply stopped at max_tokens (or the client left, or the model failed): saved with 't'.
    truncated: bool = False
    # The upstream gave no usable usage and the counts are the service's own estimate: saved with 'e'.
    estimated: bool = False
    # The upstream's usage could not be true and was replaced by the estimate (counted in the metrics).
    usage_rejected: bool = False
    # The model went past max_tokens and the reply was cut at the budget (counted in the metrics).
    over_budget: bool = False


# More tokens than any model reads or writes in one exchange (the largest context windows hold about
# 10^7): a count above it is a bug or a lie, not a measurement. Times a weight of at most 10^6
# milli-tokens (ledger/limits.py) a charge priced from such counts stays below 2^53, exact in Lua.
USAGE_TOKENS_MAX = 10**8

# A count a model can truly report: a whole number (not a float, not a string), at least 1 (neither a
# prompt nor a reply is ever empty) and at most USAGE_TOKENS_MAX.
TokenCount = Annotated[int, msgspec.Meta(ge=1, le=USAGE_TOKENS_MAX)]


class Usage(msgspec.Struct, frozen=True):
    """Token counts as the model reported them. Decoding checks that they can be true (`TokenCount`,
    both present); providers that count for themselves construct it without the check."""

    prompt_tokens: TokenCount
    completion_tokens: TokenCount


class StreamEnd(msgspec.Struct, frozen=True, kw_only=True):
    """The last event of a streamed reply: how it finished, and the usage if the upstream sent one."""

    truncated: bool
    usage: Usage | None = None
    # The usage is the provider's own estimate (a whole reply relayed as one delta may carry one).
    estimated: bool = False
    # The upstream sent usage that could not be true: `usage` is None and the reply is estimated.
    usage_rejected: bool = False


class ProviderError(Exception):
    """The model failed before a reply was complete (502): nothing is charged unless part of the reply
    reached the client, which then pays for that part (design.md section 4)."""

    code = "upstream_error"


class ProviderTimeout(ProviderError):
    """The model did not answer in time (504)."""

    code = "upstream_timeout"


class TokenCounter(Protocol):
    def __call__(self, text: str, /) -> int: ...


def prompt_texts(request: CompletionRequest) -> list[str]:
    """Every text the model is sent: the system prompt, the context, the new message."""
    return [request.system_prompt, *[turn.content for turn in request.context], request.user_content]


def estimate_prompt_tokens(request: CompletionRequest, count_tokens: TokenCounter) -> int:
    """The prompt's tokens by the service's own counter: every part the model is sent."""
    return sum(map(count_tokens, prompt_texts(request)))


def cut_to_budget(text: str, max_tokens: int, count_tokens: TokenCounter) -> str:
    """`text` if `count_tokens` finds at most `max_tokens` in it, else its longest prefix that fits.

    A counter only counts, so the cut is found by bisection: a prefix never has more tokens than the
    text it starts, and only a reply past its budget (a model ignoring max_tokens) pays the log(n)
    counts."""
    if count_tokens(text) <= max_tokens:
        return text
    fits, too_long = 0, len(text)  # count(text[:fits]) <= max_tokens < count(text[:too_long])
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if count_tokens(text[:middle]) <= max_tokens:
            fits = middle
        else:
            too_long = middle
    return text[:fits].rstrip()


class ReplyStream:
    """A reply the model has started to generate: from here on its prompt is spent.

    Call `next_batch()` (or iterate `batches()` or `deltas()`) for the text as it arrives; when it
    ends, `completion()` is the whole reply with the upstream's usage (or the estimate, flagged). If
    it stops early (the client left, or the model failed), `aclose()` cancels the upstream and
    `partial()` prices what was generated so far: the prompt plus one token per delta received, never
    more than `max_tokens`, flagged truncated and estimated. A model that goes on past `max_tokens`
    deltas is cut there, as if it had stopped.
    """

    def __init__(
        self,
        request: CompletionRequest,
        events: AsyncGenerator[str | list[str] | StreamEnd, None],
        count_tokens: TokenCounter,
        *,
        token_per_delta: bool = True,
    ) -> None:
        self.request = request
        self._events = events
        self._count_tokens = count_tokens
        # OpenAI-compatible servers (and the offline model) stream one token per chunk, so counting
        # deltas counts tokens exactly; a reply relayed whole is counted by the provider's counter.
        self._token_per_delta = token_per_delta
        self._parts: list[str] = []
        self._end: StreamEnd | None = None
        self._over_budget = False

    async def deltas(self) -> AsyncGenerator[str, None]:
        """The reply's text pieces one by one (`next_batch()` unpacked)."""
        while (batch := await self.next_batch()) is not None:
            for delta in batch:
                yield delta

    async def batches(self) -> AsyncGenerator[list[str], None]:
        """`next_batch()` until the reply ends."""
        while (batch := await self.next_batch()) is not None:
            yield batch

    async def next_batch(self) -> list[str] | None:
        """The reply's next text pieces, those that arrived together in one list, so a relay can hand
        them on in one write; None once the reply ended. Raises ProviderError if the upstream fails
        or stops mid-way.

        A coroutine, not an async generator, so that relaying a reply costs no generator of its own
        (the event loop registers each async generator, and it needs closing)."""
        if self._over_budget:
            await self._cut_at_budget()
            return None
        # A reply relayed whole is one delta, already cut to the budget by its provider.
        budget = self.request.max_tokens if self._token_per_delta else None
        while True:
            try:
                event = await self._events.__anext__()
            except StopAsyncIteration:
                if self._end is None:
                    raise ProviderError("The model's stream ended before the reply was complete.") from None
                if not self._parts:
                    raise ProviderError("The model returned an empty reply.") from None
                return None
            if isinstance(event, StreamEnd):
                self._end = event
                continue
            if (
                isinstance(event, list)
                and event
                and all(event)
                and (budget is None or len(self._parts) + len(event) <= budget)
            ):
                # The common batch, passed on as it is: pieces, none empty, all within the budget.
                self._parts += event
                return event
            batch: list[str] = []
            for piece in (event,) if isinstance(event, str) else event:
                if not piece:
                    continue
                if len(self._parts) == budget:
                    self._over_budget = True  # the pieces within the budget go first, then the cut
                    break
                self._parts.append(piece)
                batch.append(piece)
            if batch:
                return batch
            if self._over_budget:
                await self._cut_at_budget()
                return None

    async def _cut_at_budget(self) -> None:
        """A delta past the budget: the model ignores max_tokens. Nothing more is relayed (the chat
        cannot pay for it) and the upstream is closed, which stops it."""
        await self._events.aclose()
        self._end = StreamEnd(truncated=True)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def delivered(self) -> bool:
        """Whether any of the reply was handed on (to the client, when the caller relays it)."""
        return bool(self._parts)

    def completion(self) -> Completion:
        """The finished reply; only valid after `deltas()` ended without an error."""
        assert self._end is not None, "completion() before the stream ended"
        usage = self._end.usage
        if usage is not None:
            return Completion(
                content=self.text,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                truncated=self._end.truncated,
                estimated=self._end.estimated,
            )
        return Completion(
            content=self.text,
            prompt_tokens=estimate_prompt_tokens(self.request, self._count_tokens),
            completion_tokens=self._generated_tokens(),
            truncated=self._end.truncated,
            estimated=True,
            usage_rejected=self._end.usage_rejected,
            over_budget=self._over_budget,
        )

    def partial(self) -> Completion:
        """What was generated before the stream was cut short (the caller left, or the model failed)."""
        return Completion(
            content=self.text,
            prompt_tokens=estimate_prompt_tokens(self.request, self._count_tokens),
            completion_tokens=self._generated_tokens(),
            truncated=True,
            estimated=True,
        )

    def _generated_tokens(self) -> int:
        generated = len(self._parts) if self._token_per_delta else self._count_tokens(self.text)
        return min(generated, self.request.max_tokens)

    async def aclose(self) -> None:
        """Stop reading and close the upstream connection, which is how an upstream learns to stop."""
        await self._events.aclose()


class Provider(Protocol):
    name: str

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as this provider's model counts them (or the closest estimate)."""
        ...

    async def complete(self, request: CompletionRequest) -> Completion:
        """The whole reply; raises ProviderError (or ProviderTimeout) when there is none."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamingProvider(Provider, Protocol):
    """A provider that can hand out its reply as it is generated. Streaming is optional: a provider
    without it (a wrapper, a test double) is streamed as one delta by `open_stream` below."""

    async def open_stream(self, request: CompletionRequest) -> ReplyStream:
        """Start a streamed reply. Returns once the model has accepted the request; every retry
        happens before that, and a failure before it raises ProviderError (nothing was spent)."""
        ...


async def open_stream(provider: Provider, request: CompletionRequest) -> ReplyStream:
    """The provider's own stream, or its whole reply relayed as a single delta."""
    # Not isinstance(provider, StreamingProvider): a runtime protocol check walks every member of the
    # protocol on each call, and only this one tells a streaming provider apart.
    open_own = getattr(provider, "open_stream", None)
    if callable(open_own):
        return cast(ReplyStream, await open_own(request))
    completion = await provider.complete(request)
    return ReplyStream(request, _whole(completion), provider.count_tokens, token_per_delta=False)


async def _whole(completion: Completion) -> AsyncGenerator[str | StreamEnd, None]:
    yield completion.content
    usage = Usage(completion.prompt_tokens, completion.completion_tokens)
    yield StreamEnd(truncated=completion.truncated, usage=usage, estimated=completion.estimated)


def provider_from_settings(settings: Settings) -> Provider:
    """The provider the settings name (design.md section 8). Called inside the app's provider cleanup
    context, so a provider may open its pooled HTTP session here, on the running loop."""
    if settings.provider == "openai":
        from service.providers.openai import OpenAIProvider

        return OpenAIProvider.from_settings(settings)
    return provider_from_name(settings.provider)


def provider_from_name(name: str) -> Provider:
    """A provider that needs no settings: the offline model only."""
    from service.providers.offline import OfflineModel

    if name == "offline":
        return OfflineModel()
    raise ValueError(f"unknown provider {name!r}")
