"""The one middleware every request passes (its id, the in-flight cap, CORS preflight, JSON errors, its
log line and metrics), and the stamp of every response, streamed ones included, with its request id and
CORS headers."""

from __future__ import annotations

import os
import re
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.admission import Admission
from service.appkeys import ADMISSION, METRICS, REQUEST_ID, SETTINGS
from service.errors import error_response, response_for

log = structlog.get_logger("chatledger.http")

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept (so a gateway's id threads through our logs) only if it is short and plain.
_INCOMING_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# What a browser front end may send and read (api.md: X-API-Key; Part C: Idempotency-Key, SSE).
_CORS_REQUEST_HEADERS = "Content-Type, X-API-Key, Idempotency-Key, Accept, X-Request-ID"
_CORS_EXPOSED_HEADERS = "X-Request-ID, Retry-After"
_CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
_CORS_MAX_AGE_S = "600"
# The status logged and counted (never sent) for a request whose client closed its connection first.
CLIENT_CLOSED_REQUEST = 499
# An Origin worth echoing back: a serialized origin is visible ASCII (hosts in punycode). Anything else
# (a header carrying non-UTF-8 bytes) could not even be written into a response header.
_ORIGIN_RE = re.compile(r"[\x21-\x7e]{1,2048}")


def _route_label(request: web.Request) -> str:
    """The route template (bounded label values for metrics), not the path with its ids."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, refuse it past the worker's in-flight cap, answer a CORS preflight,
    render every failure as the JSON error shape, stamp the response, and log one `request` event (and
    its metrics) at its end.

    One middleware and no `on_response_prepare` hook: every middleware is one more coroutine frame
    that each request resumes at every await, and the hook one more coroutine per response. A response
    prepared by its handler (a stream) was stamped before it was prepared (`stamp_response`)."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    # 32 random hex digits, like uuid4().hex without building a UUID object on every request.
    request_id = incoming if incoming and _INCOMING_ID_RE.fullmatch(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    admission = request.app[ADMISSION]
    # Below the cap (the hot path) this is one comparison; `sheds` looks at the route only at the cap.
    if admission.in_flight >= admission.limit and admission.sheds(request):
        return _shed(request, admission)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    # Released in the `finally` below, however the request ends (a stream's end, a cancellation).
    admission.in_flight += 1
    try:
        try:
            response = _preflight_response(request) or await handler(request)
        except Exception as exc:
            response = _error_response(request, request_id, exc)
        if not response.prepared:
            stamp_response(request, response)
        status = response.status
        return response
    finally:
        admission.in_flight -= 1
        elapsed = time.perf_counter() - started
        request.app[METRICS].request_done(request.method, _route_label(request), status, elapsed)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )


def _shed(request: web.Request, admission: Admission) -> web.Response:
    """The immediate 503 `overloaded` for a request past the cap: counted apart from the service's
    faults, and logged as one line per second at most, not one per refusal (service/admission.py)."""
    response = admission.refusal()
    stamp_response(request, response)
    request.app[METRICS].shed(_route_label(request))
    if admission.log_due():
        log.warning(
            "requests_shed",
            shed=admission.logged(),
            in_flight=admission.in_flight,
            max_in_flight=admission.limit,
        )
    return response


def _error_response(request: web.Request, request_id: str, exc: Exception) -> web.Response:
    """Every failure becomes the JSON error shape; anything unexpected is a 500 with the request id
    and no traceback in the body (the log has it). A client that left before its answer (its
    connection closed mid-body) is no fault of ours: it is counted and logged as a 499, nginx's
    "client closed request", which no client ever receives."""
    if isinstance(exc, ConnectionError) and (request.transport is None or request.transport.is_closing()):
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    response = response_for(exc)
    if response is None:
        log.exception("unhandled_error")
        return error_response(500, "internal_error", "Internal server error.", request_id=request_id)
    if response.status >= 500:
        log.warning("request_failed", code=getattr(exc, "code", None), cause=repr(exc.__cause__))
    return response


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or not _ORIGIN_RE.fullmatch(origin):
        return None
    allowed = request.app[SETTINGS].cors_origin_list
    if not allowed:
        return None
    return origin if "*" in allowed or origin in allowed else None


def _preflight_response(request: web.Request) -> web.Response | None:
    """The answer to a browser's CORS preflight for an allowed origin, given before auth and routing
    see the request. Called from request_context rather than as a middleware of its own: every
    middleware is one more coroutine frame that each request resumes at every await."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    origin = _allowed_origin(request)
    if origin is None:
        return None
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": _CORS_METHODS,
            "Access-Control-Allow-Headers": _CORS_REQUEST_HEADERS,
            "Access-Control-Max-Age": _CORS_MAX_AGE_S,
            "Vary": "Origin",
        },
    )


def stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """Add the request id and, for an allowed origin, the CORS headers to a response not yet prepared:
    request_context does it for every response it returns, and a handler that prepares its own
    response (a stream) calls it first."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    origin = _allowed_origin(request)
    if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSED_HEADERS
        response.headers["Vary"] = "Origin"
