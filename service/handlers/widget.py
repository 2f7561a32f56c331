"""The chat widget (issue 8): its script, a demo page, and the proxy routes it talks to.

    GET  /widget/widget.js                          the widget, one file of plain JavaScript
    GET  /widget/                                   a demo page that embeds it
    GET  /widget/api/config                         the branding of the widget key's config
    POST /widget/api/chats/                         a new chat with the widget's budget, and its ticket
    GET  /widget/api/chats/{ticket}                 the chat's balance
    GET  /widget/api/chats/{ticket}/messages/       its history (the API's history page)
    POST /widget/api/chats/{ticket}/messages/       send a message; the reply streams as the API's SSE

The browser sends no API key: these routes use the one the server holds (service/widget/) and a ticket
that names a chat they created. Each route is the API handler's own path through the ledger, the
exchange and streaming.py, with the widget's key in place of the caller's, so no business rule lives
here. With no widget key, everything but the script answers 404 (the script holds nothing secret, and an
operator who runs a proxy of their own can still load it from here).
"""

from __future__ import annotations

import html

import msgspec
import structlog
from aiohttp import web

import ledger
from service import widget as widget_files
from service.appkeys import AUTH, LEDGER, SETTINGS, WIDGET
from service.auth import Tenant
from service.errors import ApiError
from service.handlers.common import json_response
from service.openapi import Doc, documented
from service.requests import checked_content, decode_body, decode_query, history_query, idempotency_key
from service.schemas import HistoryPageQuery, MessageOut, Page, config_out, message_out
from service.streaming import stream_reply
from service.widget import Asset, Widget

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

# The demo page's policy: scripts from this origin only, so nothing a message could carry ever runs.
_DEMO_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' https: http: data:; "
    "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PREFIX_MARK = "__CHATLEDGER_PREFIX__"


class WidgetConfig(msgspec.Struct):
    """The config's branding (the API's Config object without its ids and dates), and what the
    widget needs to know of this server: each new chat's budget and the longest message."""

    agent_name: str
    company_name: str
    primary_color: str
    header_text: str
    logo_url: str
    welcome_message: str
    chat_first_page_description: str
    is_full_width: bool
    start_page_title: str
    start_page_slogan: str
    token_limit: float
    max_content_chars: int


_BRANDING = frozenset(WidgetConfig.__struct_fields__) - {"token_limit", "max_content_chars"}


class WidgetChat(msgspec.Struct):
    """A widget chat: the ticket the browser keeps, and the balance it shows."""

    ticket: str
    chat_id: str
    token_limit: float
    token_used: float


class WidgetMessageRequest(msgspec.Struct):
    content: str


WIDGET_MESSAGE_DECODER = msgspec.json.Decoder(WidgetMessageRequest)


def _widget(request: web.Request) -> Widget:
    widget = request.app[WIDGET]
    if widget is None:
        raise web.HTTPNotFound()
    return widget


async def _tenant(request: web.Request, widget: Widget) -> Tenant:
    """The widget key's tenant. A key that stopped working is the operator's problem, not the
    visitor's: it answers 503 (and logs why) rather than a 401 the browser can do nothing about."""
    try:
        return await request.app[AUTH].tenant_for_key(widget.api_key)
    except (ApiError, ledger.ConfigNotFound) as exc:
        if isinstance(exc, ApiError) and exc.status != 401:
            raise  # 429: the config's rate limit covers every widget visitor together
        log.error("widget_key_unusable", code=getattr(exc, "code", None))
        raise ApiError(503, "widget_unavailable", "The chat widget is not available.") from exc


def _asset_response(request: web.Request, asset: Asset, body: bytes | None = None) -> web.Response:
    if body is None and asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={"ETag": asset.etag})
    response = web.Response(body=asset.body if body is None else body, content_type=asset.content_type)
    response.charset = "utf-8"
    # Revalidated on every load (the ETag makes that a 304), so an upgrade reaches browsers at once.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if body is None:
        response.headers["ETag"] = asset.etag
    return response


def _chat(widget: Widget, chat: ledger.ChatState) -> WidgetChat:
    return WidgetChat(
        ticket=widget.ticket(chat.chat_id),
        chat_id=chat.chat_id,
        token_limit=ledger.from_milli(chat.limit_milli),
        token_used=ledger.from_milli(chat.used_milli),
    )


# --- files -------------------------------------------------------------------------------------------
@routes.get("/widget/widget.js")
@documented(
    Doc(summary="The chat widget: one script to embed.", auth="none", tag="widget",
        errors=(304,), media_types=("text/javascript",))
)  # fmt: skip
async def widget_script(request: web.Request) -> web.Response:
    return _asset_response(request, widget_files.SCRIPT)


@routes.get("/widget/")
@documented(
    Doc(summary="A demo page embedding the chat widget.", errors=(404,), auth="none", tag="widget",
        media_types=("text/html",))
)  # fmt: skip
async def demo_page(request: web.Request) -> web.Response:
    _widget(request)
    prefix = html.escape(request.app[SETTINGS].api_prefix)
    page = widget_files.DEMO_PAGE.body.decode().replace(_PREFIX_MARK, prefix).encode()
    response = _asset_response(request, widget_files.DEMO_PAGE, page)
    response.headers["Content-Security-Policy"] = _DEMO_PAGE_CSP
    return response


# --- the proxy ---------------------------------------------------------------------------------------
@routes.get("/widget/api/config")
@documented(
    Doc(summary="The widget's branding and limits.", response=WidgetConfig, errors=(404, 429, 503),
        auth="none", tag="widget")
)  # fmt: skip
async def widget_config(request: web.Request) -> web.Response:
    config = (await _tenant(request, _widget(request))).config
    settings = request.app[SETTINGS]
    return json_response(
        WidgetConfig(
            # The public Config object's branding (one mapping: config_out), without its ids and dates.
            **{k: v for k, v in msgspec.structs.asdict(config_out(config)).items() if k in _BRANDING},
            token_limit=settings.widget_token_limit,
            max_content_chars=settings.max_content_chars,
        )
    )


@routes.post("/widget/api/chats/")
@documented(
    Doc(summary="Start a widget chat with the widget's budget.", response=WidgetChat,
        errors=(404, 429, 503), auth="none", tag="widget")
)  # fmt: skip
async def widget_create_chat(request: web.Request) -> web.Response:
    widget = _widget(request)
    tenant = await _tenant(request, widget)
    chat = await request.app[LEDGER].create_chat(tenant.config, widget.token_limit_milli)
    return json_response(_chat(widget, chat))


@routes.get("/widget/api/chats/{ticket}")
@documented(
    Doc(summary="A widget chat's balance.", response=WidgetChat, errors=(404, 429, 503), auth="none",
        tag="widget")
)  # fmt: skip
async def widget_get_chat(request: web.Request) -> web.Response:
    widget = _widget(request)
    chat_id = widget.chat_id(request.match_info["ticket"])
    tenant = await _tenant(request, widget)
    chat = await request.app[LEDGER].get_chat(tenant.config_id, chat_id)
    if chat.deleted:
        raise ledger.ChatDeleted()
    return json_response(_chat(widget, chat))


@routes.get("/widget/api/chats/{ticket}/messages/")
@documented(
    Doc(summary="A widget chat's history, oldest first.", query=HistoryPageQuery, response=Page[MessageOut],
        errors=(404, 429, 503), auth="none", tag="widget")
)  # fmt: skip
async def widget_history(request: web.Request) -> web.Response:
    widget = _widget(request)
    chat_id = widget.chat_id(request.match_info["ticket"])
    query = history_query(decode_query(request, HistoryPageQuery))
    tenant = await _tenant(request, widget)
    page = await request.app[LEDGER].read_history(tenant.config_id, chat_id, query)
    items = [message_out(chat_id, message) for message in page.items]
    return json_response(
        Page[MessageOut](items=items, total=page.total, limit=query.limit, offset=query.offset)
    )


@routes.post("/widget/api/chats/{ticket}/messages/")
@documented(
    Doc(summary="Send a message to a widget chat; the reply streams as Server-Sent Events.",
        body=WidgetMessageRequest, response=MessageOut, errors=(402, 404, 409, 429, 502, 503, 504),
        auth="none", tag="widget", media_types=("text/event-stream", "application/json"), idempotent=True)
)  # fmt: skip
async def widget_send(request: web.Request) -> web.StreamResponse:
    """Streamed: `delta` events, then `done` with the saved message and the balance, or `error`; a 402
    (or any failure before the first delta) is the API's JSON error. A retry with the same
    Idempotency-Key gets the saved message as JSON, uncharged, as from the API."""
    widget = _widget(request)
    chat_id = widget.chat_id(request.match_info["ticket"])
    body = decode_body(await request.read(), WIDGET_MESSAGE_DECODER)
    content = checked_content(body.content, request.app[SETTINGS].max_content_chars)
    idempotency = idempotency_key(request, "send_message", chat_id, content)
    tenant = await _tenant(request, widget)
    try:
        return await stream_reply(request, tenant.config, chat_id, content, idempotency)
    except ledger.ExchangeReplayed as replay:
        return json_response(message_out(chat_id, replay.message))
