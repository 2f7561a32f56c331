"""The `openai` provider: any OpenAI-compatible chat-completions endpoint (design.md section 8).

OpenAI, vLLM, Ollama, the llama.cpp server and LiteLLM all serve `POST {base_url}/chat/completions` with
the same body and the same answers: one JSON object, or Server-Sent Events of `chat.completion.chunk`
objects ending with `data: [DONE]`. This module speaks that wire format with the process's one pool
of keep-alive connections (service/providers/http.py), sends the hold's reply budget as `max_tokens`
so the model cannot spend past what the chat can pay, and asks for `usage` in streams
(`stream_options.include_usage`).

Failures before the first byte of a 200 answer (connect errors, timeouts, 408/409/429/5xx) are retried
a bounded number of times with a doubling backoff; after the first byte nothing is retried, because the
model has started spending. There is no tokenizer here: tiktoken downloads its tables at run time and a
self-hosted model has its own anyway, so `count_tokens` is a deliberately high estimate, used to price
the prompt before the call and, flagged 'e', when an upstream sends no usage, or usage that cannot be
true (negative, fractional, absurdly large, not a number, incomplete): such usage is logged and
treated as missing, never trusted and never a failure.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Final, Literal

import msgspec
import structlog

import service
from service.providers import (
    Completion,
    CompletionRequest,
    ProviderError,
    ProviderTimeout,
    ReplyStream,
    StreamEnd,
    Usage,
    cut_to_budget,
    estimate_prompt_tokens,
)
from service.providers.http import HttpPool, Response
from service.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

# Statuses that say "try again" (the official clients retry the same ones); any other non-200 answer
# is final: a bad key or an unknown model does not get better with retries.
RETRY_STATUSES = frozenset({408, 409, 429})
# A retry never waits longer than this, whatever Retry-After says: the client is waiting too.
RETRY_DELAY_MAX_S = 4.0

# A run of ASCII letters costs one token per 5 characters and a run of digits one per 3 (rounded up);
# any other visible character costs one. BPE tokenizers make most English words one token (with their
# leading space), split numbers into groups of up to 3 digits, and give most non-Latin characters a
# token or more, so this errs high: a prompt is rarely priced below its cost. The pattern matches
# exactly one piece per token (a run of 7 letters is matched as 5 and 2), so counting is one C call.
_TOKEN_RE = re.compile(r"[A-Za-z]{1,5}|[0-9]{1,3}|\S")

# Counts of texts up to this long are remembered (at most _COUNTS_CACHED of them): every message counts
# its config's system prompt again, and its own text twice (priced at the reserve, stored at the
# settle). Longer texts are rare, and counting them costs far more than hashing them.
_COUNTS_CACHED = 2048
_COUNT_CACHED_CHARS_MAX = 1024


@functools.lru_cache(maxsize=_COUNTS_CACHED)
def _cached_count(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def estimate_tokens(text: str) -> int:
    if len(text) <= _COUNT_CACHED_CHARS_MAX:
        return _cached_count(text)
    return len(_TOKEN_RE.findall(text))


# --- the wire format (only the fields we read; unknown ones are ignored) --------------------------------
# Decoded trees hold no reference cycles, so their structs are not tracked by the garbage collector
# (gc=False): a streamed reply decodes a few objects per token, which would otherwise bring the next
# young-generation collection closer.


class _Message(msgspec.Struct, gc=False):
    content: str | None = None


class _Choice(msgspec.Struct, gc=False):
    message: _Message
    finish_reason: str | None = None


class _Response(msgspec.Struct, gc=False):
    choices: list[_Choice]
    # Kept undecoded (an empty Raw when absent), so that usage that cannot be true makes the usage
    # missing, not the whole answer unreadable: `_usage_of` decodes it on its own.
    usage: msgspec.Raw = msgspec.Raw()


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None


class _ChunkChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct, gc=False):
    # Null or empty on the usage chunk, depending on the server.
    choices: list[_ChunkChoice] | None = None
    # As in _Response; most servers send `"usage": null` on every chunk but the last.
    usage: msgspec.Raw = msgspec.Raw()
    # Some servers report a failure inside a started stream as `data: {"error": {...}}`.
    error: Any = None


_RESPONSE_DECODER = msgspec.json.Decoder(_Response)
_CHUNK_DECODER = msgspec.json.Decoder(_Chunk)
# Usage's own constraints (service/providers/__init__.py) say what a model can truly report.
_USAGE_DECODER = msgspec.json.Decoder(Usage | None)

# What `_usage_of` answers for usage that was sent but cannot be true.
_REJECTED: Final = "rejected"


def _usage_of(raw: msgspec.Raw) -> Usage | Literal["rejected"] | None:
    """The upstream's usage; None when it sent none; _REJECTED (logged) when it cannot be true."""
    if not raw:
        return None
    try:
        return _USAGE_DECODER.decode(raw)
    # A ValidationError is a DecodeError; nesting past msgspec's depth limit is a RecursionError.
    except (msgspec.DecodeError, RecursionError) as exc:
        # msgspec's message names the field and the broken rule, never a value of the reply.
        log.warning("upstream_usage_rejected", reason=str(exc))
        return _REJECTED


class _Retry(Exception):
    """An attempt failed in a way another attempt may not: carries the error to raise if none is left."""

    def __init__(self, failure: ProviderError, retry_after_s: float = 0.0) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.retry_after_s = retry_after_s

    @classmethod
    def unreachable(cls, exc: OSError) -> _Retry:
        """No answer: a connection that failed, or one that stayed silent past its timeout."""
        if isinstance(exc, TimeoutError):
            retry = cls(ProviderTimeout("The model did not answer in time."))
        else:
            retry = cls(ProviderError(f"Could not reach the model ({type(exc).__name__})."))
        retry.__cause__ = exc
        return retry

    @classmethod
    def refused(cls, response: Response) -> _Retry:
        """An answer other than 200: worth another attempt (408, 409, 429, 5xx), or raised at once."""
        response.release()
        failure = ProviderError(f"The model answered HTTP {response.status}.")
        if response.status in RETRY_STATUSES or response.status >= 500:
            return cls(failure, _retry_after_s(response.headers))
        log.warning("upstream_refused", status=response.status)
        raise failure


class OpenAIProvider:
    """An OpenAI-compatible upstream. Construct inside the running loop (it opens its session)."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        connect_timeout_s: float = 5.0,
        pool_size: int = 100,
        pool_wait_s: float = 1.0,
        read_timeout_s: float = 30.0,
        total_timeout_s: float = 90.0,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._total_timeout_s = total_timeout_s
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        headers = {"User-Agent": f"chatledger/{service.__version__}", "Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # One pool per process: connections to the upstream are reused across requests, at most
        # `pool_size` at once; a call waits for a free one at most `pool_wait_s`. The read timeout
        # bounds every wait for bytes, the first one included; the total is enforced per exchange
        # (across retries and the whole stream), not per HTTP request.
        self._pool = HttpPool(
            self.url,
            headers,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            limit=pool_size,
            wait_s=pool_wait_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider:
        if not settings.openai_model:
            raise SettingsError("CHATLEDGER_OPENAI_MODEL: set the model to ask for (e.g. gpt-4o-mini).")
        return cls(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            model=settings.openai_model,
            connect_timeout_s=settings.openai_connect_timeout_s,
            pool_size=settings.openai_pool_size,
            pool_wait_s=settings.openai_pool_wait_s,
            read_timeout_s=settings.openai_read_timeout_s,
            total_timeout_s=settings.openai_total_timeout_s,
            max_retries=settings.openai_max_retries,
            retry_backoff_s=settings.openai_retry_backoff_s,
        )

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def close(self) -> None:
        await self._pool.close()

    # --- whole replies -------------------------------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> Completion:
        deadline = self._deadline()
        response = await self._post(self.body(request, stream=False), stream=False, deadline=deadline)
        try:
            raw = await response.read(deadline)
        except TimeoutError as exc:
            raise ProviderTimeout("The model did not finish its answer in time.") from exc
        except OSError as exc:
            raise ProviderError("The model's answer was cut off.") from exc
        finally:
            response.release()
        return self._completion(request, raw)

    def _completion(self, request: CompletionRequest, raw: bytes) -> Completion:
        try:
            answer = _RESPONSE_DECODER.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProviderError("The model's answer was not a chat completion.") from exc
        if not answer.choices:
            raise ProviderError("The model's answer had no choices.")
        choice = answer.choices[0]
        content = choice.message.content
        if not content:
            raise ProviderError("The model returned an empty reply.")
        usage = _usage_of(answer.usage)
        if isinstance(usage, Usage):
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        else:
            prompt_tokens = estimate_prompt_tokens(request, self.count_tokens)
            completion_tokens = self.count_tokens(content)
        # Past the budget by the model's own report, or by the estimate when it made none: the reply is
        # cut to what the hold pays for. The reported count stays, so the settle clamps it at the hold
        # and records the excess; an estimate is the budget, since the rest was never delivered.
        over_budget = completion_tokens > request.max_tokens
        if over_budget:
            content = cut_to_budget(content, request.max_tokens, self.count_tokens)
            if not isinstance(usage, Usage):
                completion_tokens = request.max_tokens
        return Completion(
            content=content,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            truncated=over_budget or choice.finish_reason == "length",
            estimated=not isinstance(usage, Usage),
            usage_rejected=usage is _REJECTED,
            over_budget=over_budget,
        )

    # --- streamed replies ----------------------------------------------------------------------------
    async def open_stream(self, request: CompletionRequest) -> ReplyStream:
        deadline = self._deadline()
        response = await self._post(self.body(request, stream=True), stream=True, deadline=deadline)
        return ReplyStream(request, self._stream_events(response, deadline), self.count_tokens)

    async def _stream_events(
        self, response: Response, deadline: float
    ) -> AsyncGenerator[list[str] | StreamEnd, None]:
        """Deltas of choice 0, those of one network read in one list, then one StreamEnd. The response
        is closed however this ends, which is what cancels the generation upstream when the caller
        stops early."""
        state = _StreamState()
        events = _SseEvents()
        try:
            while not state.done:
                raw = await _read_some(response, deadline)
                deltas: list[str] = []
                try:
                    state.read(events.feed(raw) if raw else events.close(), deltas)
                except ProviderError:
                    if deltas:  # what came before the failure in the same read is the client's
                        yield deltas
                    raise
                if deltas:
                    yield deltas
                if not raw:
                    break
            if not state.done and state.finish is None:
                raise ProviderError("The model's stream was cut before the reply was complete.")
        finally:
            # Fully read: back to the pool. Anything else: drop the connection, so the upstream stops.
            if state.done:
                response.release()
            else:
                response.close()
        yield StreamEnd(
            truncated=state.finish == "length",
            usage=state.usage if isinstance(state.usage, Usage) else None,
            usage_rejected=state.usage is _REJECTED,
        )

    # --- the request ---------------------------------------------------------------------------------
    def body(self, request: CompletionRequest, *, stream: bool) -> bytes:
        """The JSON body, with the fields the official clients send."""
        messages = [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
        messages += [
            {"role": "user" if turn.is_user else "assistant", "content": turn.content}
            for turn in request.context
        ]
        messages.append({"role": "user", "content": request.user_content})
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": messages,
            # The reply budget of the hold: the model cannot spend past what the chat can pay.
            "max_tokens": request.max_tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return msgspec.json.encode(body)

    def _deadline(self) -> float:
        return self._pool.time() + self._total_timeout_s

    async def _post(self, body: bytes, *, stream: bool, deadline: float) -> Response:
        """The upstream's 200 answer, its body not yet read; retried only up to here."""
        attempt = 0
        while True:
            try:
                response = await self._pool.post(body, accept=_ACCEPT[stream], deadline=deadline)
            except OSError as exc:  # the pool's timeouts are TimeoutErrors, which are OSErrors
                retry = _Retry.unreachable(exc)
            else:
                if response.status == 200:
                    return response
                retry = _Retry.refused(response)
            delay_s = min(max(self._retry_backoff_s * 2**attempt, retry.retry_after_s), RETRY_DELAY_MAX_S)
            out_of_time = self._pool.time() + delay_s >= deadline
            if attempt >= self._max_retries or out_of_time:
                raise retry.failure from retry.__cause__
            attempt += 1
            log.warning("upstream_retry", attempt=attempt, reason=str(retry.failure), delay_s=delay_s)
            await asyncio.sleep(delay_s)


_ACCEPT = {False: b"application/json", True: b"text/event-stream"}


def _retry_after_s(headers: Mapping[str, str]) -> float:
    """The upstream's Retry-After in seconds (only the number form), or 0; `headers` names lowercased."""
    try:
        return max(float(headers.get("retry-after", "0")), 0.0)
    except ValueError:
        return 0.0


def _decode_chunk(data: bytes) -> _Chunk:
    try:
        return _CHUNK_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        # msgspec checks that strings are UTF-8, so a stream that is not is reported here too.
        raise ProviderError("The model's stream carried a malformed chunk.") from exc


_DONE = b"[DONE]"
# What most servers send as the usage of every chunk but the last.
_NO_USAGE = msgspec.Raw(b"null")


class _StreamState:
    """What a stream said so far besides its text: how it finished, its usage, whether it is done."""

    def __init__(self) -> None:
        self.finish: str | None = None
        self.usage: Usage | Literal["rejected"] | None = None
        self.done = False

    def read(self, events: list[bytes], deltas: list[str]) -> None:
        """Take in `events` (each one's `data`), appending choice 0's text to `deltas`, up to [DONE].

        The chunks of one read are decoded by one `map` over msgspec's decoder, with no Python call
        per chunk; if one is malformed, they are decoded again one by one, so that the deltas before
        the broken chunk are still the client's."""
        done = _DONE in events
        if done:
            events = events[: events.index(_DONE)]
        try:
            chunks = list(map(_CHUNK_DECODER.decode, events))
        except (msgspec.DecodeError, RecursionError):
            for data in events:  # raises at the malformed one, after taking those before it
                self._take([_decode_chunk(data)], deltas)
        else:
            self._take(chunks, deltas)
        self.done = done

    def _take(self, chunks: list[_Chunk], deltas: list[str]) -> None:
        for chunk in chunks:
            if chunk.error is not None:
                raise ProviderError("The model reported an error in the middle of its reply.")
            if chunk.usage and chunk.usage != _NO_USAGE:
                self.usage = _usage_of(chunk.usage) or self.usage
            for choice in chunk.choices or ():
                if choice.index != 0:
                    continue
                delta = choice.delta
                if delta is not None and delta.content:
                    deltas.append(delta.content)
                if choice.finish_reason:
                    self.finish = choice.finish_reason


class _SseEvents:
    """Server-Sent Events parsed as their bytes arrive: the `data` of each event (multi-line data
    joined), comments and other fields skipped. Fed whatever one read returned, it answers every event
    that read completed, so a burst of chunks costs one pass, not a wait per line.

    What OpenAI-compatible servers send, `data: <json>` lines each followed by a blank line, is split
    by a few bytes operations when a read holds only that; anything else (comments, other fields,
    multi-line data, CRLF line ends) goes line by line."""

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, raw: bytes) -> list[bytes]:
        buffered = self._rest + raw
        events: list[bytes] = []
        if not self._data and buffered.startswith(b"data: ") and b"\r" not in buffered:
            end = buffered.rfind(b"\n\n")
            if end > 0:
                events = buffered[6:end].split(b"\n\ndata: ")
                # Pieces without a line break are events of one data line each. Checked on their
                # join, a copy and a memchr: counting the line breaks instead walks them byte by byte.
                if b"\n" in b"".join(events):
                    events = []
                else:
                    buffered = buffered[end + 2 :]
        lines = buffered.split(b"\n")
        self._rest = lines.pop()
        self._lines(lines, events)
        return events

    def close(self) -> list[bytes]:
        """The body ended: its last line counts even without a newline, and ends its event."""
        lines, self._rest = [self._rest, b""], b""
        events: list[bytes] = []
        self._lines(lines, events)
        return events

    def _lines(self, lines: list[bytes], events: list[bytes]) -> None:
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                self._data.append(value.removeprefix(b" "))


async def _read_some(response: Response, deadline: float) -> bytes:
    """What the body has for us now (waiting for at least a byte), b"" at its end; a stall past the
    read timeout or the deadline raises."""
    try:
        return await response.read_some(deadline)
    except TimeoutError as exc:
        raise ProviderTimeout("The model stopped sending its reply.") from exc
    except OSError as exc:
        raise ProviderError("The model's stream was cut before the reply was complete.") from exc
