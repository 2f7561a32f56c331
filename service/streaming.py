"""POST /chats/messages/ as Server-Sent Events (api.md Part C), framed by aiohttp-sse.

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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse

import ledger
from service.appkeys import EXCHANGE
from service.errors import response_for
from service.exchange import ClientGone, Exchanged
from service.middlewares import stamp_response
from service.schemas import ENCODER, MessageOut, message_out

log = structlog.get_logger(__name__)

EVENT_STREAM = "text/event-stream"
# What a write to a client that left raises: a reset connection, or aiohttp-sse's send timeout on a
# client that stopped reading.
CLIENT_GONE = (ConnectionResetError, TimeoutError)


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
        await sse.send_framed(b"".join(_event("delta", {"content": text}) for text in texts))

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


class _EventStream(EventSourceResponse):
    """aiohttp-sse's response, with events framed by the caller sent in one write: the headers go
    with the first events, and the last event with the end of the body."""

    _send_headers_immediately = False

    async def send_framed(self, framed: bytes, *, last: bool = False) -> None:
        """`framed` (whole events) in one write, the body's end with it if `last`, with `send()`'s
        timeout and its handling of a client that left or stopped reading."""
        try:
            async with asyncio.timeout(self._send_timeout):
                await (self.write_eof(framed) if last else self.write(framed))
        except ConnectionResetError:
            self.stop_streaming()
            raise
        except TimeoutError:
            self.stop_streaming()
            self._abort_transport()
            raise


def _event(name: str, payload: object) -> bytes:
    """One event, framed as aiohttp-sse frames it (its JSON data has no line breaks)."""
    return b"event: " + name.encode() + b"\r\ndata: " + ENCODER.encode(payload) + b"\r\n\r\n"


async def _start(request: web.Request) -> _EventStream:
    sse = _EventStream(allow_all_methods=True)
    # Prepared here, so request_context cannot stamp it when the handler returns.
    stamp_response(request, sse)
    await sse.prepare(request)
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
