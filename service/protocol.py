"""The HTTP connection under the app: what happens before, or outside, the middleware.

aiohttp's parser refuses some requests before any middleware runs (a header line over 8190 bytes, more
than 128 headers, bad framing or chunking, an invalid method, target or version), and an `Expect` it does
not know is refused by aiohttp outside the middleware too. Out of the box those answers are text/plain
and the parser's refusals log a traceback at error level, though the fault is the client's. aiohttp
offers no header-read timeout either (3.14: only the keep-alive timeout, an hour by default), so a
client that trickles a header line every few seconds holds its connection, and a worker's sockets, for
as long as it likes.

`EdgeRequestHandler`, aiohttp's per-connection protocol with three changes, fixes both:

- `handle_error` (aiohttp's hook for the parser's refusals and for what escapes the app) answers the
  JSON error shape of service/errors.py and logs a client's fault at info, by kind only: the parser's
  message echoes the offending line, which may hold an API key;
- `finish_response` re-renders an HTTPException raised outside the middleware as JSON;
- a request's line and headers must arrive within `header_timeout_s` of the connection's opening, or
  of the first byte of the next request on a kept-alive connection; past it the client gets a 408 (or,
  if it sent nothing, just the close). Bodies are not timed here: the handler reads them.

aiohttp builds its protocol in `web.Server.__call__` from a fixed class, so `EdgeServer` overrides that
call and `EdgeAppRunner` hands the app's server over to it (private names of aiohttp, which the raw-socket
tests in tests/http/test_edges.py exercise on every run).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.streams import StreamReader

from service.appkeys import METRICS
from service.errors import error_body, error_response, response_for
from service.metrics import Metrics

log = structlog.get_logger("chatledger.http")

# The route label of requests answered before routing (metrics' `route`), and their method label.
UNPARSED_ROUTE = "unparsed"
_NO_METHOD = "-"
_TIMEOUT_DETAIL = "The request's line and headers did not arrive in time."
# Written straight to the socket: no request exists yet to build a response for.
_TIMEOUT_BODY = error_body("request_timeout", _TIMEOUT_DETAIL)
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)
# What the parser refused, most specific first: (exception class, code, detail).
_REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    (LineTooLong, "header_too_large", "A request line or header field is longer than 8190 bytes."),
    (BadHttpMethod, "bad_http_request", "The request method is not valid."),
    (BadStatusLine, "bad_http_request", "The request line is not valid HTTP/1.x."),
    (InvalidURLError, "bad_http_request", "The request target is not a valid URL."),
)
_REFUSED = ("bad_http_request", "The request's headers or framing are not valid HTTP/1.1.")
# Exceptions that are a client's doing when aiohttp reports them: malformed input, or a client gone.
_CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError, ConnectionError)


def _refusal(exc: BaseException | None) -> tuple[str, str]:
    for cls, code, detail in _REFUSALS:
        if isinstance(exc, cls):
            return code, detail
    return _REFUSED


class EdgeRequestHandler(web.RequestHandler):
    __slots__ = ("_head_bytes", "_header_timeout_s", "_header_timer", "_last_payload", "_metrics")

    def __init__(
        self, manager: web.Server, *, header_timeout_s: float, metrics: Metrics | None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        # Whether any byte of the awaited request head arrived (a silent connection gets no 408).
        self._head_bytes = False
        # The body of the newest request parsed: bytes that arrive while it is incomplete are its own.
        self._last_payload: StreamReader | None = None
        self._metrics = metrics

    # --- the header-read timeout ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._close or self._force_close or self._upgraded:
            super().data_received(data)
            return
        payload = self._last_payload
        body_done = payload is None or payload.is_eof()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            # A head is complete (or refused): its clock stops, and the next one's starts with its bytes.
            self._cancel_header_timer()
            if payload is not None and not payload.is_eof() and self._fail_body(payload):
                return
            self._last_payload = self._messages[-1][1] if self._messages else None
        elif body_done and data:
            # The previous request was whole before these bytes: they begin the next request's head.
            self._head_bytes = True
            if self._header_timer is None:
                self._arm_header_timer()

    def _fail_body(self, payload: StreamReader) -> bool:
        """The parser refused bytes of a body being read (a bad chunk size): aiohttp queues that refusal
        as a request of its own and leaves the handler reading the body waiting for bytes that will
        never come. The handler's read fails instead, and answers the 400 itself. True if it was so."""
        refused = self._messages and not isinstance(self._messages[-1][0], RawRequestMessage)
        if not refused or self._waiter is not None:
            return False
        self._messages.pop()
        payload.set_exception(web.RequestPayloadError("The request body's framing is not valid."))
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._header_timeout_s, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._head_bytes = False

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport is None or self._force_close:
            return
        idle = self._waiter is not None and not self._waiter.done()
        log.info("request_header_timeout", timeout_s=self._header_timeout_s, started=self._head_bytes)
        if not idle:
            # A request is being answered: let it finish, then close instead of awaiting the next.
            self.close()
            return
        if self._head_bytes:
            self.transport.write(TIMEOUT_RESPONSE)
            self._count(408)
        self.force_close()

    # --- JSON answers --------------------------------------------------------------------------------
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The parser's refusals (400) and whatever escaped the app (500, 504), in the JSON shape."""
        if status >= 500:
            log.error("unhandled_error", status=status, exc_info=exc)
        else:
            # The kind only: the parser's message quotes the offending line, which may hold a key.
            log.info("bad_http_request", status=status, kind=type(exc).__name__ if exc else None)
            log.debug("bad_http_request_detail", message=message)
        if request.writer.output_size > 0:
            # As aiohttp does: a response has begun, so the connection is broken; start() drops it.
            raise ConnectionError("A response was already sent: no error response can follow it.")
        if status >= 500:
            response = error_response(status, "internal_error", "Internal server error.")
        else:
            response = error_response(status, *_refusal(exc))
        self._count(status)
        response.force_close()
        return response

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """An HTTPException raised outside the middleware (an unknown `Expect`) is re-rendered as JSON;
        the middleware has already rendered every other answer."""
        if isinstance(resp, web.HTTPException):
            rendered = response_for(resp)
            assert rendered is not None, "every HTTPException has a JSON form"
            log.info("bad_http_request", status=resp.status, kind=type(resp).__name__)
            self._count(resp.status)
            resp = rendered
        return await super().finish_response(request, resp, start_time)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's own error log (a payload that broke during its lingering read, a handler that
        returned no response): a client's fault at info without its traceback, anything else at error."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, _CLIENT_FAULTS):
            log.info("client_fault", kind=type(exc).__name__)
            return
        log.error("http_protocol_error", message=args[0] % args[1:] if args else None, exc_info=exc)

    def _count(self, status: int) -> None:
        if self._metrics is not None:
            self._metrics.request_done(_NO_METHOD, UNPARSED_ROUTE, status, 0.0)


def _refusing_unknown_expectations(handler: Any) -> Any:
    """The app's handler, with an `Expect` other than `100-continue` refused (417) before it runs.

    aiohttp refuses it too, before any middleware, but echoes the header's value into the body, so a
    value that is not UTF-8 makes that refusal itself fail, as a 500."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT)
        if expect and request.version == HttpVersion11 and expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed()
        response: web.StreamResponse = await handler(request)
        return response

    return handle


class EdgeServer(web.Server):
    """aiohttp's Server, building EdgeRequestHandler for each connection."""

    def __init__(
        self, handler: Any, *, header_timeout_s: float, metrics: Metrics | None, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.metrics = metrics

    def __call__(self) -> EdgeRequestHandler:
        return EdgeRequestHandler(
            self, loop=self._loop, header_timeout_s=self.header_timeout_s, metrics=self.metrics,
            **self._kwargs,
        )  # fmt: skip


class EdgeAppRunner(web.AppRunner):
    """web.AppRunner serving its app through EdgeServer."""

    __slots__ = ("_header_timeout_s",)

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        # The app's own server (its startup has run by then), rebuilt as an EdgeServer with the same
        # handler, request factory and arguments.
        made = await super()._make_server()
        return EdgeServer(
            _refusing_unknown_expectations(made.request_handler),
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            header_timeout_s=self._header_timeout_s,
            metrics=self.app.get(METRICS),
            **made._kwargs,
        )
