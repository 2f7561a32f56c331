"""The chat widget's proxy: the routes its script talks to.

    GET  /widget/api/config                         the branding of the widget key's config
    POST /widget/api/chats/                         a new chat with the widget's budget, and its ticket
    GET  /widget/api/chats/{ticket}                 the chat's balance
    GET  /widget/api/chats/{ticket}/messages/       its history (the API's history page)
    POST /widget/api/chats/{ticket}/messages/       send a message; the reply streams as the API's SSE

The browser sends no API key: these routes use the one the server holds (service/widget/) and a ticket
that names a chat they created. Each route calls the API's own function for what it does (messages.py's
answer_message and history_page, chats.py's live_chat) with the widget's key in place of the caller's,
so no business rule lives here. With no widget key, they answer 404.
"""

from __future__ import annotations

import structlog
from aiohttp import web

import ledger
from service.appkeys import AUTH, LEDGER, SETTINGS, WIDGET
from service.auth import Tenant
from service.errors import ApiError
from service.handlers.chats import live_chat
from service.handlers.common import json_response
from service.handlers.messages import answer_message, history_page
from service.openapi import Doc, documented
from service.requests import decode_body, history_query, message_request
from service.schemas import HistoryPageQuery, MessageOut, Page
from service.widget import Widget
from service.widget_schemas import (
    WIDGET_MESSAGE_DECODER,
    WidgetChat,
    WidgetConfig,
    WidgetMessageRequest,
    widget_chat,
    widget_config,
)

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()


def widget_of(request: web.Request) -> Widget:
    """The server's widget; 404 when it has no key."""
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


@routes.get("/widget/api/config")
@documented(
    Doc(summary="The widget's branding and limits.", response=WidgetConfig, errors=(404, 429, 503),
        auth="none", tag="widget")
)  # fmt: skip
async def get_config(request: web.Request) -> web.Response:
    config = (await _tenant(request, widget_of(request))).config
    return json_response(widget_config(config, request.app[SETTINGS]))


@routes.post("/widget/api/chats/")
@documented(
    Doc(summary="Start a widget chat with the widget's budget.", response=WidgetChat,
        errors=(404, 429, 503), auth="none", tag="widget")
)  # fmt: skip
async def create_chat(request: web.Request) -> web.Response:
    widget = widget_of(request)
    tenant = await _tenant(request, widget)
    chat = await request.app[LEDGER].create_chat(tenant.config, widget.token_limit_milli)
    return json_response(widget_chat(widget, chat))


@routes.get("/widget/api/chats/{ticket}")
@documented(
    Doc(summary="A widget chat's balance.", response=WidgetChat, errors=(404, 429, 503), auth="none",
        tag="widget")
)  # fmt: skip
async def get_chat(request: web.Request) -> web.Response:
    widget = widget_of(request)
    chat_id = widget.chat_id(request.match_info["ticket"])
    tenant = await _tenant(request, widget)
    return json_response(widget_chat(widget, await live_chat(request, tenant.config_id, chat_id)))


@routes.get("/widget/api/chats/{ticket}/messages/")
@documented(
    Doc(summary="A widget chat's history, oldest first.", query=HistoryPageQuery, response=Page[MessageOut],
        errors=(404, 429, 503), auth="none", tag="widget")
)  # fmt: skip
async def list_messages(request: web.Request) -> web.Response:
    widget = widget_of(request)
    chat_id = widget.chat_id(request.match_info["ticket"])
    query = history_query(request)
    tenant = await _tenant(request, widget)
    return await history_page(request, tenant.config_id, chat_id, query)


@routes.post("/widget/api/chats/{ticket}/messages/")
@documented(
    Doc(summary="Send a message to a widget chat; the reply streams as Server-Sent Events.",
        body=WidgetMessageRequest, response=MessageOut, errors=(402, 404, 409, 429, 502, 503, 504),
        auth="none", tag="widget", media_types=("text/event-stream", "application/json"), idempotent=True)
)  # fmt: skip
async def send_message(request: web.Request) -> web.StreamResponse:
    """Streamed: `delta` events, then `done` with the saved message and the balance, or `error`; a 402
    (or any failure before the first delta) is the API's JSON error. A retry with the same
    Idempotency-Key gets the saved message as JSON, uncharged, as from the API."""
    widget = widget_of(request)
    chat_id = widget.chat_id(request.match_info["ticket"])
    body = decode_body(await request.read(), WIDGET_MESSAGE_DECODER)
    content, idempotency = message_request(request, chat_id, body.content)
    tenant = await _tenant(request, widget)
    return await answer_message(request, tenant.config, chat_id, content, idempotency, stream=True)
