"""POST /chats/messages/ as Server-Sent Events (api.md Part C).

The response starts with the reply's first delta, not before: until then every failure (402, 404, a
model that does not answer) is still a plain JSON error with its status. After it, the stream carries:

    event: delta   data: {"content": "..."}                     one per piece of the reply; pieces that
                                                                arrive together go out in one write
    event: done    data: {"message": {...}, "tokens_charged": ..., "token_limit": ..., "token_used": ...,
                          "prompt_tokens": ..., "completion_tokens": ..., "estimated": ...}
    event: error   data: {"detail": "...", "code": "...", "status": 502}   instead of done on a failure

Once a delta was sent, the client pays for what it received, however the stream ends (the exchange
settles it): a client that disconnects, a model that fails or stalls (then the `error` event), or a
model that goes past the reply budget (cut there, then `done`) each leave the prompt plus the delivered
tokens charged, never more than the hold, and the partial reply saved, flagged truncated.

The response is a plain chunked StreamResponse with the headers an event stream needs. A stream that
goes quiet for PING_INTERVAL_S gets a comment line (`: ping`, which EventSource ignores) so that
proxies keep it open; a write that cannot finish within SEND_TIMEOUT_S (a client that stopped reading)
aborts the connection. One timer per stream does both, not a pinger task and a timeout scope per
write: a short reply pays for no machinery it does not use (design.md section 8).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from aiohttp import web

import ledger
from service.appkeys import EXCHANGE
from service.errors import response_for
from service.exchange import ClientGone, Exchanged
from service.middlewares import stamp_response
from service.schemas import ENCODER, MessageOut, message_out

log = structlog.get_logger(__name__)

EVENT_STREAM = "text/event-stream"
# What a write to a client that left raises: a reset connection, or the send timeout on a client that
# stopped reading.
CLIENT_GONE = (ConnectionResetError, TimeoutError)
# A stream with nothing to say for this long says `: ping`.
PING_INTERVAL_S = 15.0
# A write that waits this long for the client to take the bytes before it ends the connection.
SEND_TIMEOUT_S = 120.0
_PING = b": ping\r\n\r\n"
# Not cached by anyone on the way, not buffered by nginx.
_HEADERS = {
    "Content-Type": EVENT_STREAM,
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


class StreamDone(msgspec.Struct, kw_only=True):
    """The last event of a good stream: the saved AI message (the non-streamed answer's JSON), the
    exchange's charge and the chat's balance after it, and the token counts charged for."""

    message: MessageOut
    tokens_charged: float
    token_limit: float
    token_used: float
    prompt_tokens: int
    completion_tokens: int
    # The counts are the service's estimate: the upstream sent no usage.
    estimated: bool


def wants_stream(request: web.Request, stream_field: bool) -> bool:
    """`"stream": true` in the body, or `text/event-stream` among the accepted media types."""
    accepted = request.headers.get("Accept", "")
    return stream_field or any(
        part.split(";", 1)[0].strip().lower() == EVENT_STREAM for part in accepted.split(",")
    )


async def stream_reply(
    request: web.Request,
    config: ledger.ConfigRecord,
    chat_id: str,
    content: str,
    idempotency: ledger.IdempotencyKey | None = None,
) -> web.StreamResponse:
    """Run the exchange, relaying its deltas; see the module docstring for the events."""
    sse: _EventStream | None = None

    async def send_deltas(texts: Sequence[str]) -> None:
        nonlocal sse
        if sse is None:
            sse = await _start(request)
        await sse.send_framed(delta_events(texts))

    try:
        exchanged = await request.app[EXCHANGE].stream(config, chat_id, content, send_deltas, idempotency)
        if sse is None:  # every reply has a delta (an empty one is an error); kept for safety
            sse = await _start(request)
        # The exchange is settled: a client leaving during this last event changes nothing.
        with contextlib.suppress(*CLIENT_GONE):
            await sse.send_framed(_event("done", _done(chat_id, exchanged)), last=True)
    except ClientGone:
        pass
    except Exception as exc:
        if sse is None:
            raise  # nothing sent yet: the error middleware answers with JSON and the right status
        await _send_error(sse, exc)
    finally:
        if sse is not None:
            sse.stop_streaming()
    return sse if sse is not None else web.Response(status=204)


class _EventStream(web.StreamResponse):
    """A chunked event stream whose events are framed by the caller and sent in one write each: the
    headers go with the first events, and the last event with the end of the body.

    One timer per stream watches it: due when the stream will have been quiet for PING_INTERVAL_S
    (then it pings), or when the write in progress will have waited SEND_TIMEOUT_S (then it aborts the
    connection), whichever is first. A write moves it only when its own deadline comes first, which
    at the default values never happens: a short reply pays for one timer, not one per write."""

    _send_headers_immediately = False

    def __init__(self) -> None:
        super().__init__(headers=_HEADERS)
        self.enable_chunked_encoding()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._quiet_since = 0.0
        # Writes in progress (a ping's may overlap the exchange's), and when the oldest began.
        self._writes = 0
        self._writing_since = 0.0
        self._stalled = False
        self._stopped = False

    async def start(self, request: web.Request) -> None:
        self._transport = request.transport
        await self.prepare(request)
        self._quiet_since = self._loop.time()
        self._arm(self._quiet_since + PING_INTERVAL_S)

    async def send_framed(self, framed: bytes, *, last: bool = False) -> None:
        """`framed` (whole events) in one write, the body's end with it if `last`. A client that left
        raises ConnectionResetError; one that takes nothing for SEND_TIMEOUT_S, TimeoutError, and
        its connection is aborted. Either way the stream is stopped."""
        if last:
            self._stopped = True  # no ping may follow the end of the body
        if not self._writes:
            self._writing_since = self._loop.time()
            stall_due = self._writing_since + SEND_TIMEOUT_S
            if self._timer is None or self._timer.when() > stall_due:
                self._arm(stall_due)
        self._writes += 1
        try:
            await (self.write_eof(framed) if last else self.write(framed))
        except ConnectionError as exc:  # a reset, or aiohttp's "Connection lost" from a drain
            self.stop_streaming()
            if self._stalled:
                raise TimeoutError("The client took nothing for the send timeout.") from exc
            raise ConnectionResetError(str(exc)) from exc
        finally:
            self._writes -= 1
            self._quiet_since = self._loop.time()
        if self._stalled:  # the abort woke the write as if it had gone through
            self.stop_streaming()
            raise TimeoutError("The client took nothing for the send timeout.")

    def stop_streaming(self) -> None:
        """Nothing more to watch: the stream is over (ended, failed, or its client left)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._watch)

    def _watch(self) -> None:
        """The timer: abort a write stalled for SEND_TIMEOUT_S, ping a stream quiet for
        PING_INTERVAL_S, or look again when one of those would be so."""
        self._timer = None
        now = self._loop.time()
        if self._writes:
            stall_due = self._writing_since + SEND_TIMEOUT_S
            if now >= stall_due:
                self._stalled = True
                if self._transport is not None:
                    self._transport.abort()
            else:
                self._arm(stall_due)
        elif not self._stopped:
            ping_due = self._quiet_since + PING_INTERVAL_S
            if now >= ping_due:
                self._ping_task = self._loop.create_task(self._ping())
                ping_due = now + PING_INTERVAL_S
            self._arm(ping_due)

    async def _ping(self) -> None:
        if self._stopped:
            return
        # A client gone stops the stream here; the exchange's next write learns it too.
        with contextlib.suppress(*CLIENT_GONE):
            await self.send_framed(_PING)


_DELTA_HEAD = b'event: delta\r\ndata: {"content":"'
_DELTA_TAIL = b'"}\r\n\r\n'


def delta_events(texts: Sequence[str]) -> bytes:
    """One `delta` event per text, the bytes `_event("delta", {"content": text})` gives each, from one
    encoding of the list: its strings are split apart at each `","`, which only occurs between two
    strings (inside one, every quote is escaped, so it follows a backslash, never a comma)."""
    encoded = ENCODER.encode(texts)[2:-2].split(b'","')
    return _DELTA_HEAD + (_DELTA_TAIL + _DELTA_HEAD).join(encoded) + _DELTA_TAIL


def _event(name: str, payload: object) -> bytes:
    """One event (its JSON data has no line breaks)."""
    return b"event: " + name.encode() + b"\r\ndata: " + ENCODER.encode(payload) + b"\r\n\r\n"


async def _start(request: web.Request) -> _EventStream:
    sse = _EventStream()
    # Prepared here, so request_context cannot stamp it when the handler returns.
    stamp_response(request, sse)
    await sse.start(request)
    return sse


def _done(chat_id: str, exchanged: Exchanged) -> StreamDone:
    settlement, completion = exchanged.settlement, exchanged.completion
    return StreamDone(
        message=message_out(chat_id, settlement.ai_message),
        tokens_charged=ledger.from_milli(settlement.charged_milli),
        token_limit=ledger.from_milli(settlement.limit_milli),
        token_used=ledger.from_milli(settlement.used_milli),
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        estimated=completion.estimated,
    )


async def _send_error(sse: _EventStream, exc: Exception) -> None:
    """The JSON error the status-code path would have answered, as an `error` event."""
    response = response_for(exc)
    if response is None:
        log.exception("unhandled_error")
        fields: dict[str, Any] = {"detail": "Internal server error.", "code": "internal_error"}
        status = 500
    else:
        assert isinstance(response.body, bytes)
        fields, status = msgspec.json.decode(response.body), response.status
        log.warning("stream_failed", code=fields.get("code"), status=status, cause=repr(exc.__cause__))
    with contextlib.suppress(*CLIENT_GONE):
        await sse.send_framed(_event("error", {**fields, "status": status}), last=True)
