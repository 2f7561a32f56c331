"""The built-in offline model: deterministic, no network, not an LLM (design.md section 8).

It exists so chatledger runs, demos and load-tests with no model account, and so tests can assert exact
charges. Its tokenizer is the whole truth for it: a token is a word (letters, digits, underscore) or a
single punctuation mark, so prompt and reply counts are exact and the estimate before the call equals
the usage after it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections.abc import AsyncGenerator

from service.providers import (
    Completion,
    CompletionRequest,
    ReplyStream,
    StreamEnd,
    Usage,
    prompt_texts,
)

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Words of the user's message quoted back in a reply: enough to show it was read, bounded in size.
_QUOTE_TOKENS = 12
# The message's first _QUOTE_TOKENS tokens in one match (possessive, so a word is never split into
# several tokens to make up the count): the end of the quote without a Python loop over matches.
_QUOTE_RE = re.compile(rf"(?:\s*+(?:\w++|[^\w\s])){{{_QUOTE_TOKENS}}}")

NOT_AN_LLM = "(chatledger offline model, not an LLM)"


# Texts up to this long have their counts remembered (at most _COUNTS_CACHED of them): every message
# re-counts the chat's recent history, which is the same few texts again and again. Longer
# texts are rare, and counting them costs far more than hashing them.
_COUNTS_CACHED = 2048
_COUNT_CACHED_CHARS_MAX = 1024


def _tokens(text: str) -> list[re.Match[str]]:
    return list(_TOKEN_RE.finditer(text))


def _end_of_token(text: str, count: int) -> int:
    """Where the `count`th token of `text` ends (1-based; `text` has at least `count` tokens)."""
    return next(itertools.islice(_TOKEN_RE.finditer(text), count - 1, None)).end()


@functools.lru_cache(maxsize=_COUNTS_CACHED)
def _cached_count(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


class OfflineModel:
    name = "offline"

    def count_tokens(self, text: str) -> int:
        if len(text) <= _COUNT_CACHED_CHARS_MAX:
            return _cached_count(text)
        return len(_TOKEN_RE.findall(text))

    def _prompt_tokens(self, request: CompletionRequest) -> int:
        """`estimate_prompt_tokens` by this model's counter. When every text is short enough to be
        remembered, each is counted by one C call into the cache instead of a Python call of
        `count_tokens`: a prompt holds the context's 20 texts, counted again for every message."""
        texts = prompt_texts(request)
        counter = _cached_count if max(map(len, texts)) <= _COUNT_CACHED_CHARS_MAX else self.count_tokens
        return sum(map(counter, texts))

    async def complete(self, request: CompletionRequest) -> Completion:
        """The reply cut after its last token that fits max_tokens, as `_reply_tokens` cuts it, from
        counts alone: no match objects unless the reply is cut."""
        reply = self.reply_text(request)
        total = self.count_tokens(reply)
        kept = min(total, max(request.max_tokens, 0))
        # Every character but whitespace is part of a token, so a whole reply's last token ends
        # where its trailing whitespace starts.
        content = reply.rstrip() if kept == total else reply[: _end_of_token(reply, kept)] if kept else ""
        return Completion(
            content=content,
            prompt_tokens=self._prompt_tokens(request),
            completion_tokens=kept,
            truncated=kept < total,
        )

    async def open_stream(self, request: CompletionRequest) -> ReplyStream:
        """The same reply as `complete`, one token per delta, so both paths charge the same."""
        return ReplyStream(request, self._deltas(request), self.count_tokens)

    async def _deltas(self, request: CompletionRequest) -> AsyncGenerator[str | StreamEnd, None]:
        reply, tokens, kept = self._reply_tokens(request)
        start = 0
        for token in kept:
            # Each delta carries the spaces before its token, so the deltas join into the reply.
            yield reply[start : token.end()]
            start = token.end()
            # A real model takes time per token; yielding here lets a cancellation land mid-reply.
            await asyncio.sleep(0)
        usage = Usage(self._prompt_tokens(request), len(kept))
        yield StreamEnd(truncated=len(kept) < len(tokens), usage=usage)

    def _reply_tokens(
        self, request: CompletionRequest
    ) -> tuple[str, list[re.Match[str]], list[re.Match[str]]]:
        """The reply, its tokens, and those that fit max_tokens: cut after the last one, so the charge
        is exactly max_tokens when the reply is longer."""
        reply = self.reply_text(request)
        tokens = _tokens(reply)
        return reply, tokens, tokens[: max(request.max_tokens, 0)]

    def reply_text(self, request: CompletionRequest) -> str:
        """A reply that depends only on the request: the same prompt always gets the same answer."""
        content = request.user_content
        words = self.count_tokens(content)
        quoted = _QUOTE_RE.match(content) if words >= _QUOTE_TOKENS else None
        quote = content[: quoted.end()] + " …" if quoted is not None else content.strip()
        earlier = len(request.context)
        return (
            f"{NOT_AN_LLM} You wrote {words} tokens: “{quote}”. "
            f"I see {earlier} earlier message{'s' if earlier != 1 else ''} in this chat. "
            "Point chatledger at a real model to get real answers."
        )

    async def close(self) -> None:
        return None
