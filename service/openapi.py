"""GET /openapi.json: the OpenAPI 3.1 document, generated from the app's routes and msgspec types.

Each handler carries a `Doc` (via `@documented`); the document walks the router, so a route that exists
is documented and a documented route exists. Schemas come from msgspec, the same types that decode the
requests and encode the responses. Only the as-specified slash form of each path is listed (both are
served; api.md Part B 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

import service

H = TypeVar("H", bound=Callable[..., Any])

Auth = Literal["api_key", "admin", "none"]

# Statuses every operation of a kind may answer, on top of its own.
_COMMON = {"api_key": (401, 429, 503), "admin": (401, 503), "none": ()}
_BODY_ERRORS = (400, 413, 422)
_DESCRIPTIONS = {
    400: "Malformed JSON, a non-object body, a missing chat_id or a bad header.",
    401: "Missing or unknown credentials.",
    402: "Not enough tokens left for the prompt and one reply token.",
    404: "Not found (or another config's, or deleted).",
    409: "A request with this Idempotency-Key is in flight, or the state forbids it.",
    413: "Request body too large.",
    422: "Invalid field values.",
    429: "Rate limited: see Retry-After.",
    502: "The model failed.",
    503: "The token store is unavailable: see Retry-After.",
    504: "The model timed out.",
}


# Schemas of the non-JSON media types: text bodies, and one Server-Sent Event of a streamed reply (its
# `data` is JSON: a delta, the final saved message, or an error; service/streaming.py).
_MEDIA_SCHEMAS: dict[str, dict[str, Any]] = {
    "text/plain": {"type": "string"},
    "text/html": {"type": "string"},
    "text/event-stream": {
        "type": "object",
        "properties": {"event": {"enum": ["delta", "done", "error"]}, "data": {"type": "string"}},
        "required": ["data"],
    },
}


class Doc(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    body: Any = None
    query: Any = None
    response: Any = None
    errors: tuple[int, ...] = ()
    auth: Auth = "api_key"
    # Extra response media types, e.g. text/event-stream for streamed replies.
    media_types: tuple[str, ...] = ("application/json",)
    tag: str = "chats"


class ErrorBody(msgspec.Struct):
    """Every error: a human sentence and a machine code, plus fields that help (api.md Part B 3)."""

    detail: str
    code: str


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


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of `app`'s routes. Raises if a route has no Doc."""
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
        if form in seen:
            continue
        seen.add(form)
        operations.append((route.method.lower(), path, doc))

    types = {tp for _m, _p, d in operations for tp in (d.body, d.response) if tp is not None}
    types.add(ErrorBody)
    ordered = sorted(types, key=_name)
    schemas, components = msgspec.json.schema_components(ordered, ref_template="#/components/schemas/{name}")
    refs = dict(zip(ordered, schemas, strict=True))
    error_schema = {**refs[ErrorBody], "additionalProperties": True}
    components = {**components, "ErrorBody": {**components["ErrorBody"], "additionalProperties": True}}

    paths: dict[str, dict[str, Any]] = {}
    for method, path, doc in operations:
        paths.setdefault(path, {})[method] = _operation(method, path, doc, refs, error_schema)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatledger",
            "version": service.__version__,
            "description": "Chat sessions with exact token budgets. Every error body is ErrorBody.",
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


def _operation(
    method: str, path: str, doc: Doc, refs: dict[Any, dict[str, Any]], error_schema: dict[str, Any]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": doc.summary,
        "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
        "tags": [doc.tag],
        "parameters": _parameters(path, doc),
    }
    if doc.auth == "api_key":
        operation["security"] = [{"ApiKey": []}]
    elif doc.auth == "admin":
        operation["security"] = [{"AdminToken": []}]
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[doc.body]}},
        }
    success_schema = refs[doc.response] if doc.response is not None else {}
    responses: dict[str, Any] = {
        "200": {
            "description": "Success.",
            "content": {
                media: {"schema": _MEDIA_SCHEMAS.get(media, success_schema)} for media in doc.media_types
            },
        }
    }
    statuses = (
        set(doc.errors) | set(_COMMON[doc.auth]) | (set(_BODY_ERRORS) if doc.body is not None else set())
    )
    if doc.query is not None:
        statuses.add(422)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": _DESCRIPTIONS[status],
            "content": {"application/json": {"schema": error_schema}},
        }
    operation["responses"] = responses
    return operation


def _parameters(path: str, doc: Doc) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for part in path.split("/")
        if part.startswith("{")
    ]
    if doc.body is not None and doc.auth == "api_key":
        parameters.append(
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"}}
        )  # fmt: skip
    if doc.query is not None:
        schema = msgspec.json.schema(doc.query)
        body = schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
        required = set(body.get("required", []))
        for name, prop in body.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return parameters


_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chatledger API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<noscript>The interactive reference needs JavaScript; the document is
<a href="openapi.json">openapi.json</a>.</noscript>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


def docs_page() -> str:
    """An HTML page rendering the document with Swagger UI (loaded by the reader's browser)."""
    return _DOCS_PAGE
