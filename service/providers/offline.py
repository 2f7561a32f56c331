"""The built-in offline model: deterministic, no network, not an LLM (design.md section 8).

It exists so chatledger runs, demos and load-tests with no model account, and so tests can assert exact
charges. Its tokenizer is the whole truth for it: a token is a word (letters, digits, underscore) or a
single punctuation mark, so prompt and reply counts are exact and the estimate before the call equals
the usage after it.
"""

from __future__ import annotations

import re

from service.providers import Completion, CompletionRequest

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Words of the user's message quoted back in a reply: enough to show it was read, bounded in size.
_QUOTE_TOKENS = 12

NOT_AN_LLM = "(chatledger offline model, not an LLM)"


def _tokens(text: str) -> list[re.Match[str]]:
    return list(_TOKEN_RE.finditer(text))


class OfflineModel:
    name = "offline"

    def count_tokens(self, text: str) -> int:
        return sum(1 for _ in _TOKEN_RE.finditer(text))

    async def complete(self, request: CompletionRequest) -> Completion:
        reply = self.reply_text(request)
        tokens = _tokens(reply)
        truncated = len(tokens) > request.max_tokens
        if truncated:
            # Cut after the last token that fits, so the charge is exactly max_tokens.
            reply = reply[: tokens[request.max_tokens - 1].end()] if request.max_tokens > 0 else ""
        prompt_tokens = (
            self.count_tokens(request.system_prompt)
            + sum(self.count_tokens(turn.content) for turn in request.context)
            + self.count_tokens(request.user_content)
        )
        return Completion(
            content=reply,
            prompt_tokens=prompt_tokens,
            completion_tokens=min(len(tokens), request.max_tokens),
            truncated=truncated,
        )

    def reply_text(self, request: CompletionRequest) -> str:
        """A reply that depends only on the request: the same prompt always gets the same answer."""
        words = _tokens(request.user_content)
        quoted = (
            request.user_content[: words[_QUOTE_TOKENS - 1].end()] if len(words) >= _QUOTE_TOKENS else None
        )
        quote = (quoted + " …") if quoted is not None else request.user_content.strip()
        earlier = len(request.context)
        return (
            f"{NOT_AN_LLM} You wrote {len(words)} tokens: “{quote}”. "
            f"I see {earlier} earlier message{'s' if earlier != 1 else ''} in this chat. "
            "Point chatledger at a real model to get real answers."
        )

    async def close(self) -> None:
        return None
