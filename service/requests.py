"""Request bytes and query strings -> typed values, with the statuses of api.md Part B 2, 5, 6 and 10.

Malformed JSON or a non-object body is 400, a missing or non-string `chat_id` is 400, any other missing
or wrong-typed field is 422 with msgspec's `$.path` message as the detail. The typed decoder runs first;
only a failed decode pays for the second, untyped look that tells a 400 from a 422. JSON nested deeper
than the interpreter's recursion limit is malformed too: msgspec raises RecursionError for it, and a
stranger can send 10 KB of `[` to any JSON route.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from aiohttp import web

import ledger
from service.appkeys import SETTINGS
from service.errors import ApiError
from service.schemas import HistoryPageQuery

T = TypeVar("T")


_TOO_DEEP = "The request body is nested too deeply."


def decode_body(body: bytes, decoder: msgspec.json.Decoder[T], *, chat_id_field: bool = False) -> T:
    try:
        return decoder.decode(body)
    # ValidationError subclasses DecodeError: it must be caught first.
    except msgspec.ValidationError as exc:
        shape = _untyped(body)
        if shape is not None and not isinstance(shape, dict):
            raise ApiError(400, "invalid_body", "The request body must be a JSON object.") from exc
        if chat_id_field and isinstance(shape, dict) and not isinstance(shape.get("chat_id"), str):
            raise ApiError(400, "chat_id_required", "chat_id is required and must be a string.") from exc
        raise ApiError(422, "validation_error", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", "The request body is not valid JSON.") from exc
    except RecursionError as exc:
        raise ApiError(400, "malformed_json", _TOO_DEEP) from exc


def _untyped(body: bytes) -> object | None:
    """The body as plain JSON values, or None when even that fails (a number out of float range).

    The typed decoder may stop at the first `[` of a deep body (an array where an object belongs)
    that this one must descend, so the depth is checked here too."""
    try:
        shape: object = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    except RecursionError as exc:
        raise ApiError(400, "malformed_json", _TOO_DEEP) from exc
    return shape


def decode_query(request: web.Request, query_type: type[T]) -> T:
    """Query parameters into `query_type`; numbers and booleans are parsed from their text."""
    try:
        return msgspec.convert(dict(request.query), query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "validation_error", str(exc)) from exc


def chat_id_from(value: str) -> str:
    """The canonical chat id; any string that is not a UUID reads as an unknown chat (Part B 6)."""
    chat_id = ledger.normalize_uuid(value)
    if chat_id is None:
        raise ledger.ChatNotFound()
    return chat_id


def path_chat_id(request: web.Request) -> str:
    return chat_id_from(request.match_info["chat_id"])


def checked_content(content: str, max_chars: int) -> str:
    """The message as sent, if it has a visible character and fits the configured length (Part B 5)."""
    if not content.strip():
        raise ApiError(422, "invalid_content", "content must contain at least one non-space character.")
    if len(content) > max_chars:
        raise ApiError(422, "content_too_long", f"content must be at most {max_chars} characters.")
    return content


def amount_milli(tokens: float, *, positive: bool, field: str) -> int:
    try:
        return ledger.to_milli(tokens, positive=positive)
    except ledger.InvalidAmount as exc:
        raise ApiError(422, "invalid_amount", f"{field}: {exc}") from exc


IDEMPOTENCY_HEADER = "Idempotency-Key"
# Printable ASCII, 1..255 characters: what clients generate (UUIDs, ULIDs, hashes), and safe to echo.
_IDEMPOTENCY_KEY_RE = re.compile(r"[\x20-\x7e]{1,255}")


def idempotency_key(request: web.Request, operation: str, *parts: str) -> ledger.IdempotencyKey | None:
    """The request's Idempotency-Key (design.md section 5), fingerprinted by what the request means
    (the decoded body), so `1000` and `1000.0` are the same request; None without the header."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters.",
        )
    return ledger.IdempotencyKey.of(key, operation, *parts)


def message_request(
    request: web.Request, chat_id: str, content: str
) -> tuple[str, ledger.IdempotencyKey | None]:
    """A message's checked content and the request's Idempotency-Key. Every route that sends a message
    fingerprints it alike, so a retry through the widget replays a message sent through the API."""
    content = checked_content(content, request.app[SETTINGS].max_content_chars)
    return content, idempotency_key(request, "send_message", chat_id, content)


def history_query(request: web.Request) -> ledger.HistoryQuery:
    """The page of history the query string asks for: by offset (api.md Part A) or after or before one
    message id (Part C), never a mix."""
    query = decode_query(request, HistoryPageQuery)
    cursors = [c for c in (query.after, query.before) if c is not None]
    if len(cursors) > 1 or (cursors and query.offset):
        raise ApiError(422, "validation_error", "Use one of offset, after or before.")
    parsed = [ledger.parse_message_id(c) for c in cursors]
    if None in parsed:
        raise ApiError(422, "validation_error", "after/before must be a message id.")
    return ledger.HistoryQuery(
        limit=query.limit,
        offset=query.offset,
        after=parsed[0] if query.after is not None else None,
        before=parsed[0] if query.before is not None else None,
    )
