"""The two middlewares: request context (id, one log event) outside, error rendering inside."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.appkeys import REQUEST_ID
from service.errors import error_response, response_for

log = structlog.get_logger("chatledger.http")

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept (so a gateway's id threads through our logs) only if it is short and plain.
_INCOMING_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, echo it in `X-Request-ID`, and log one `request` event at its end."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _INCOMING_ID_RE.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )


@web.middleware
async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the JSON error shape; anything unexpected is a 500 with the request id
    and no traceback in the body (the log has it)."""
    try:
        return await handler(request)
    except Exception as exc:
        response = response_for(exc)
        if response is None:
            log.exception("unhandled_error")
            return error_response(
                500, "internal_error", "Internal server error.", request_id=request[REQUEST_ID]
            )
        if response.status >= 500:
            log.warning("request_failed", code=getattr(exc, "code", None), cause=repr(exc.__cause__))
        return response
