"""One error shape for every response: `{"detail": "<sentence>", "code": "<machine_code>", ...}`.

The mapping from ledger and provider exceptions to statuses is the table below, not `if` chains in
handlers (api.md Part B 3, design.md section 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

import ledger
from service.providers import ProviderError, ProviderTimeout


class ApiError(Exception):
    """An error answer decided in service/: status, code, sentence, and fields that help."""

    def __init__(
        self, status: int, code: str, detail: str, *, retry_after_s: float | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.extra = extra


def _insufficient(exc: Exception) -> dict[str, Any]:
    assert isinstance(exc, ledger.InsufficientTokens)
    return {
        "token_limit": ledger.from_milli(exc.limit_milli),
        "token_used": ledger.from_milli(exc.used_milli),
        "tokens_available": ledger.from_milli(exc.available_milli),
        "tokens_needed": ledger.from_milli(exc.needed_milli),
    }


def _held(exc: Exception) -> dict[str, Any]:
    assert isinstance(exc, ledger.TokensHeld)
    return {
        "token_limit": ledger.from_milli(exc.limit_milli),
        "token_used": ledger.from_milli(exc.used_milli),
        "token_reserved": ledger.from_milli(exc.reserved_milli),
        "tokens_available": ledger.from_milli(exc.available_milli),
        "tokens_needed": ledger.from_milli(exc.needed_milli),
    }


def _no_extra(_exc: Exception) -> dict[str, Any]:
    return {}


# Exception class -> (status, extra fields). The first class in MRO order that is listed wins.
ERROR_TABLE: dict[type[Exception], tuple[int, Callable[[Exception], dict[str, Any]]]] = {
    ledger.InsufficientTokens: (402, _insufficient),
    # Held is not spent: tokens other messages hold come back when they settle, so a retry may pass.
    ledger.TokensHeld: (429, _held),
    ledger.ChatNotFound: (404, _no_extra),
    ledger.ChatDeleted: (404, _no_extra),
    ledger.ConfigNotFound: (404, _no_extra),
    ledger.DuplicateInFlight: (409, _no_extra),
    ledger.ChatNotDeleted: (409, _no_extra),
    ledger.IdempotencyKeyReused: (422, _no_extra),
    ledger.InvalidAmount: (422, _no_extra),
    ledger.LimitTooLarge: (422, _no_extra),
    # The model outlived the hold's deadline; its tokens were released, nothing was saved.
    ledger.ReservationExpired: (504, _no_extra),
    ledger.LedgerUnavailable: (503, _no_extra),
    ProviderTimeout: (504, _no_extra),
    ProviderError: (502, _no_extra),
}

# Seconds a client should wait before retrying: a duplicate in flight (409), the store (503), the
# model (502/504).
RETRY_AFTER_S = {409: 1, 502: 1, 503: 1, 504: 1}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    417: "expectation_failed",
}


def error_body(code: str, detail: str, **extra: Any) -> bytes:
    return msgspec.json.encode({"detail": detail, "code": code, **extra})


def error_response(
    status: int, code: str, detail: str, *, retry_after_s: float | None = None, **extra: Any
) -> web.Response:
    response = web.Response(
        status=status, body=error_body(code, detail, **extra), content_type="application/json"
    )
    if retry_after_s is not None:
        # Whole seconds, rounded up: Retry-After has no fractions, and early retries would be refused.
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    elif status in RETRY_AFTER_S:
        response.headers["Retry-After"] = str(RETRY_AFTER_S[status])
    return response


def response_for(exc: Exception) -> web.Response | None:
    """The JSON error for a known exception, or None when it is unexpected (a 500)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.detail, retry_after_s=exc.retry_after_s, **exc.extra)
    if isinstance(exc, web.HTTPException):
        code = _HTTP_CODES.get(exc.status, "http_error")
        detail = "Request body is too large." if exc.status == 413 else exc.reason + "."
        response = error_response(exc.status, code, detail)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if isinstance(exc, web.RequestPayloadError):
        # The head parsed, then the body broke: bad chunking, a Content-Encoding that does not decode.
        return error_response(400, "malformed_body", "The request body's framing or encoding is not valid.")
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            status, extra = ERROR_TABLE[cls]
            return error_response(
                status,
                getattr(exc, "code", "error"),
                str(exc),
                retry_after_s=getattr(exc, "retry_after_s", None),
                **extra(exc),
            )
    return None
