"""GET /openapi.json: the OpenAPI 3.1 document, generated from the app's routes and msgspec types.

Each handler carries a `Doc` (via `@documented`); the document walks the router, so a route that exists
is documented and a documented route exists. Schemas come from msgspec, the same types that decode the
requests and encode the responses. Only the as-specified slash form of each path is listed (both are
served; api.md Part B 1); HEAD, which every GET route answers, is left implicit.

The document is meant to be exact, so that generated clients and fuzzers trust it: every status a route
can answer is listed (those of its kind of auth, of a body, a query, an Idempotency-Key, and its own),
every rule a client can break is a schema constraint, and a streamed reply is described as the
`text/event-stream` it is, with the data of each of its events.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar

import msgspec
import msgspec.inspect
from aiohttp import web

import service
from service.appkeys import ADMISSION, SETTINGS
from service.schemas import StreamDelta, StreamError
from service.streaming import StreamDone

H = TypeVar("H", bound=Callable[..., Any])

Auth = Literal["api_key", "admin", "none"]

# Statuses every operation of a kind may answer, on top of its own. An API key may be unknown (401),
# belong to a deleted config (404), be over its config's rate (429); the store may be down (503). The
# admin surface answers 404 when it is off (no CHATLEDGER_ADMIN_TOKEN).
_COMMON: dict[Auth, tuple[int, ...]] = {"api_key": (401, 404, 429, 503), "admin": (401, 404, 503), "none": ()}
_BODY_ERRORS = (400, 413, 422)
_IDEMPOTENCY_ERRORS = (400, 409, 422)
_DESCRIPTIONS = {
    304: "Not modified: the If-None-Match ETag is current.",
    400: "Malformed JSON, a non-object body, a missing chat_id, or a malformed Idempotency-Key.",
    401: "Missing or unknown credentials.",
    402: "Not enough tokens left for the prompt and one reply token; nothing was generated or saved.",
    404: "Not found: an unknown or other config's resource, a deleted chat (code chat_deleted), a key whose "
    "config is gone, or a surface that is switched off.",
    409: "A request with this Idempotency-Key is still in flight, or the resource's state forbids it.",
    413: "Request body over the configured size.",
    422: "Invalid field or query values, an Idempotency-Key reused with another request, or a top-up that "
    "would take the limit past 10^12.",
    429: "Rate limited (code rate_limited); on a message, also: the chat can pay, but messages in flight "
    "hold its tokens (code tokens_held), or its config has its share of model calls running (code "
    "model_calls_exceeded); nothing was reserved, retry after Retry-After.",
    502: "The model failed before the reply started; nothing was charged.",
    503: "The token store is unavailable, or the worker is at its in-flight cap (code overloaded).",
    504: "The model timed out before the reply started; nothing was charged.",
}
# Statuses whose answer says when to try again (service/errors.py).
_RETRY_AFTER = frozenset({409, 429, 502, 503, 504})

_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id, in the logs too (the caller's own X-Request-ID when it is plain).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
    },
}

# Path parameters, by name: what each is, and the form it takes.
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "chat_id": {"description": "A chat id (a UUID; any other string reads as unknown, 404).",
                "schema": {"type": "string", "format": "uuid"}},
    "config_id": {"description": "A config id (a UUID; any other string reads as unknown, 404).",
                  "schema": {"type": "string", "format": "uuid"}},
    "key_id": {"description": "An API key's id, as listed.", "schema": {"type": "string", "minLength": 1}},
    "ticket": {"description": "A widget chat's ticket, as the widget was given it.",
               "schema": {"type": "string", "minLength": 1}},
    "name": {"description": "A file of the reference page.", "schema": {"type": "string", "minLength": 1}},
}  # fmt: skip

_IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retries with the same key and request get the first answer, charged once; the same key "
    "with another request is 422, while the first is in flight 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
}

# A message's content (api.md Part B 5): a visible character, that is one Python's str.isspace() (which
# service/requests.py strips) does not count as a space, spelled so ECMA and Python regexes agree.
_VISIBLE_CHARACTER = (
    "[^\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
)

# A streamed reply's events, and the type of each one's `data` (service/streaming.py).
STREAM_EVENTS: dict[str, type[msgspec.Struct]] = {
    "delta": StreamDelta,
    "done": StreamDone,
    "error": StreamError,
}
EVENT_STREAM = "text/event-stream"


class Doc(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    description: str = ""
    body: Any = None
    query: Any = None
    response: Any = None
    errors: tuple[int, ...] = ()
    auth: Auth = "api_key"
    # Response media types, in the order a client should prefer them; text/event-stream is a streamed
    # reply (STREAM_EVENTS), other text types are strings.
    media_types: tuple[str, ...] = ("application/json",)
    # Takes an Idempotency-Key header.
    idempotent: bool = False
    # Statuses answered with a body of their own type rather than ErrorBody (e.g. 503 of /readyz).
    other_responses: tuple[tuple[int, Any], ...] = ()
    tag: str = "chats"


class ErrorBody(msgspec.Struct):
    """Every error: a human sentence and a machine code, plus fields that help (api.md Part B 3)."""

    detail: str
    code: str


class InsufficientTokensBody(msgspec.Struct):
    """402: the chat's balance and what the message needed (api.md Part B 8)."""

    detail: str
    code: str
    token_limit: float
    token_used: float
    tokens_available: float
    tokens_needed: float


_DOC_ATTRIBUTE = "__openapi_doc__"


def documented(doc: Doc) -> Callable[[H], H]:
    def attach(handler: H) -> H:
        setattr(handler, _DOC_ATTRIBUTE, doc)
        return handler

    return attach


def doc_of(handler: object) -> Doc | None:
    doc = getattr(handler, _DOC_ATTRIBUTE, None)
    return doc if isinstance(doc, Doc) else None


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("[", "_").replace("]", "").replace(", ", "_")


def _operations(app: web.Application) -> list[tuple[str, str, Doc]]:
    """Every routed operation with its Doc, once per path (one slash form). The admin API is listed only
    when it is on: off, it answers 404 everywhere, as if it did not exist, and so does the document."""
    admin_on = bool(app[SETTINGS].admin_token)
    operations: list[tuple[str, str, Doc]] = []
    seen: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical if route.resource else ""
        doc = doc_of(route.handler)
        if doc is None:
            raise LookupError(f"{route.method} {path} has no OpenAPI Doc")
        form = (route.method, path.rstrip("/"))
        if doc.auth == "admin" and not admin_on:
            continue
        if form not in seen:
            seen.add(form)
            operations.append((route.method.lower(), path, doc))
    return operations


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of `app`'s routes. Raises if a route has no Doc."""
    operations = _operations(app)
    types: set[Any] = {ErrorBody, InsufficientTokensBody, *STREAM_EVENTS.values()}
    for _method, _path, doc in operations:
        types |= {tp for tp in (doc.body, doc.response) if tp is not None}
        types |= {tp for _status, tp in doc.other_responses}
    ordered = sorted(types, key=_name)
    schemas, components = msgspec.json.schema_components(ordered, ref_template="#/components/schemas/{name}")
    refs = dict(zip(ordered, schemas, strict=True))
    # Error bodies carry fields that help beyond detail and code (api.md Part B 3).
    for error_type in (ErrorBody, InsufficientTokensBody):
        components[_name(error_type)]["additionalProperties"] = True
    bodies = {doc.body for _m, _p, doc in operations if doc.body is not None}
    _constrain_content(components, {_name(body) for body in bodies}, app[SETTINGS].max_content_chars)
    _require_sent_fields(components, _structs(types - bodies) - _structs(bodies))
    for schema in components.values():
        _apply_marks(schema)

    paths: dict[str, dict[str, Any]] = {}
    admission = app[ADMISSION]
    for method, path, doc in operations:
        shed = admission.may_shed(path)
        paths.setdefault(path, {})[method] = _operation(method, path, doc, refs, shed=shed)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatledger",
            "version": service.__version__,
            "description": "Chat sessions with exact token budgets. Every error body is ErrorBody "
            "(402: InsufficientTokensBody); every response carries X-Request-ID.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "AdminToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _constrain_content(components: dict[str, Any], bodies: set[str], max_chars: int) -> None:
    """A message's `content` in every request body: a visible character, at most the configured length
    (api.md Part B 5). Checked by service/requests.py, whose limit is a setting, so it is stated here."""
    for name in bodies:
        content = components[name].get("properties", {}).get("content")
        if content is not None and content.get("type") == "string":
            content.update(minLength=1, maxLength=max_chars, pattern=_VISIBLE_CHARACTER)


# What msgspec.inspect describes a type with: a type's parts are these, a struct's fields the second.
_INFO = (msgspec.inspect.Type, msgspec.inspect.Field)


def _structs(types: Iterable[Any]) -> set[Any]:
    """The struct types among `types` and inside them (a Page's items, a list's elements)."""
    found: set[Any] = set()
    pending: list[Any] = list(msgspec.inspect.multi_type_info(list(types)))
    while pending:
        info = pending.pop()
        if isinstance(info, msgspec.inspect.Field):
            pending.append(info.type)
            continue
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in found:
                continue
            found.add(info.cls)
        for name in info.__struct_fields__:
            value = getattr(info, name)
            pending += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, _INFO)]
    return found


def _require_sent_fields(components: dict[str, Any], answers: set[Any]) -> None:
    """Every field of a struct the server only writes is required: msgspec writes each one unless the
    struct omits its defaults (MessageOut does), so a default there is a stored record's first value
    (ledger.Branding's), not a field a client may go without."""
    for struct in answers:
        schema = components.get(_name(struct))
        if schema is None or struct.__struct_config__.omit_defaults:
            continue
        for prop in schema.get("properties", {}).values():
            prop.pop("default", None)
        schema["required"] = list(schema.get("properties", {}))


def _apply_marks(schema: Any) -> None:
    """Turn the `x-type` marks of service/admin_schemas.py into the schema's `type`, everywhere."""
    for node in _walk(schema):
        if "x-type" in node:
            node["type"] = node.pop("x-type")


def _walk(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for value in list(schema.values()):
            yield from _walk(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _walk(value)


def _statuses(doc: Doc, *, shed: bool) -> set[int]:
    # Any route but health and metrics may be refused at the worker's in-flight cap (503 overloaded).
    statuses = set(doc.errors) | set(_COMMON[doc.auth]) | ({503} if shed else set())
    if doc.body is not None:
        statuses |= set(_BODY_ERRORS)
    if doc.query is not None:
        statuses.add(422)
    if doc.idempotent:
        statuses |= set(_IDEMPOTENCY_ERRORS)
    return statuses - {status for status, _tp in doc.other_responses}


def _headers(status: int) -> dict[str, Any]:
    headers = {"X-Request-ID": {**_HEADER_SCHEMAS["X-Request-ID"], "required": True}}
    if status in _RETRY_AFTER:
        headers["Retry-After"] = {**_HEADER_SCHEMAS["Retry-After"], "required": True}
    return headers


def _operation(
    method: str, path: str, doc: Doc, refs: dict[Any, dict[str, Any]], *, shed: bool
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": doc.summary,
        "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
        "tags": [doc.tag],
        "parameters": _parameters(path, doc),
    }
    if doc.description:
        operation["description"] = doc.description
    if doc.auth != "none":
        operation["security"] = [{"ApiKey" if doc.auth == "api_key" else "AdminToken": []}]
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[doc.body]}},
        }
    responses: dict[str, Any] = {"200": _success(doc, refs)}
    for status, tp in doc.other_responses:
        responses[str(status)] = {
            "description": _DESCRIPTIONS[status],
            "headers": _headers(status),
            "content": {"application/json": {"schema": refs[tp]}},
        }
    for status in sorted(_statuses(doc, shed=shed)):
        response: dict[str, Any] = {"description": _DESCRIPTIONS[status], "headers": _headers(status)}
        if status != 304:
            error = InsufficientTokensBody if status == 402 else ErrorBody
            response["content"] = {"application/json": {"schema": refs[error]}}
        responses[str(status)] = response
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _success(doc: Doc, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for media in doc.media_types:
        if media == "application/json":
            content[media] = {"schema": refs[doc.response] if doc.response is not None else {}}
        elif media == EVENT_STREAM:
            content[media] = {"schema": _event_stream_schema()}
        else:
            content[media] = {"schema": {"type": "string"}}
    return {"description": "Success.", "headers": _headers(200), "content": content}


def _event_stream_schema() -> dict[str, Any]:
    """Server-Sent Events. Before OpenAPI 3.2's `itemSchema`, a stream's `schema` describes each event
    (as schemathesis reads it too): the event's type in `event`, and its `data`, one line of JSON whose
    schema is the type's (STREAM_EVENTS)."""
    events = [
        {
            "type": "object",
            "properties": {
                "event": {"const": name},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": f"#/components/schemas/{_name(tp)}"},
                },
            },
            "required": ["event", "data"],
        }
        for name, tp in STREAM_EVENTS.items()
    ]
    return {
        "description": "Each event of the stream: `delta` events with the reply's pieces as they are "
        "generated, then `done` with the saved message and the charge, or `error` (the JSON error and its "
        "status) when the model fails after the reply started. Failures before the first delta (402 "
        "included) are JSON answers with their status.",
        "oneOf": events,
    }


def _parameters(path: str, doc: Doc) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": part[1:-1], "in": "path", "required": True, **_PATH_PARAMETERS[part[1:-1]]}
        for part in path.split("/")
        if part.startswith("{")
    ]
    if doc.idempotent:
        parameters.append(dict(_IDEMPOTENCY_PARAMETER))
    if doc.query is not None:
        schema = msgspec.json.schema(doc.query)
        body = schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
        required = set(body.get("required", []))
        for name, prop in body.get("properties", {}).items():
            prop = _without_null(prop)
            parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                parameter["description"] = prop["description"]
            parameters.append(parameter)
    return parameters


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional query parameter's schema: absent means None, so `null` is not a value it takes."""
    options = prop.get("anyOf")
    if options is None:
        return prop
    kept = [option for option in options if option.get("type") != "null"]
    rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


# --- the reference page ------------------------------------------------------------------------------
# Swagger UI from the swagger-ui-bundle-v2 package, served by this server: the page works offline, and
# loads no script from anywhere else. Its policy allows this origin only; inline styles are Swagger UI's
# own (it sets style attributes), and data: images are the icons its stylesheet embeds.
DOCS_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
DOCS_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "docs.js")
_ASSET_TYPES = {".css": "text/css", ".js": "text/javascript"}

_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chatledger API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{prefix}/docs/assets/swagger-ui.css"></head>
<body><div id="ui" data-url="{prefix}/openapi.json"></div>
<noscript>The interactive reference needs JavaScript; the document is
<a href="{prefix}/openapi.json">openapi.json</a>.</noscript>
<script src="{prefix}/docs/assets/swagger-ui-bundle.js"></script>
<script src="{prefix}/docs/assets/docs.js"></script>
</body></html>
"""

# The page's own script (no inline script, so the policy needs no 'unsafe-inline' for scripts). No
# validator badge: Swagger UI would send the document to validator.swagger.io.
_DOCS_SCRIPT = b""""use strict";
(function () {
  var root = document.getElementById("ui");
  window.ui = SwaggerUIBundle({ url: root.dataset.url, domNode: root, validatorUrl: null });
})();
"""


def docs_page(prefix: str) -> web.Response:
    """The reference page, its links under the API's base path."""
    page = _DOCS_PAGE.format(prefix=html.escape(prefix, quote=True))
    return web.Response(text=page, content_type="text/html", headers=DOCS_SECURITY_HEADERS)


@functools.cache
def _asset(name: str) -> tuple[bytes, bytes]:
    """A file of the page, plain and gzipped (Swagger UI's script is 1.5 MB, a fifth of that gzipped);
    read once per process, on first use."""
    if name == "docs.js":
        body = _DOCS_SCRIPT
    else:
        from swagger_ui_bundle import swagger_ui_path

        body = (swagger_ui_path / name).read_bytes()
    return body, gzip.compress(body, mtime=0)


def docs_asset(name: str, accept_encoding: str) -> web.Response:
    """One of DOCS_ASSETS (404 for any other name), gzipped when the client takes it."""
    if name not in DOCS_ASSETS:
        raise web.HTTPNotFound()
    plain, packed = _asset(name)
    content_type = _ASSET_TYPES[name[name.rindex(".") :]]
    headers = {**DOCS_SECURITY_HEADERS, "Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding"}
    if "gzip" in accept_encoding.lower():
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=packed, content_type=content_type, charset="utf-8", headers=headers)
    return web.Response(body=plain, content_type=content_type, charset="utf-8", headers=headers)
