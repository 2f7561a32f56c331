"""POST /chats/messages/ (one exchange) and GET /chats/{chat_id}/messages/ (history pages)."""

from __future__ import annotations

from aiohttp import web

import ledger
from service.appkeys import EXCHANGE, LEDGER, SETTINGS
from service.errors import ApiError
from service.handlers.common import json_response, tenant_of
from service.requests import chat_id_from, checked_content, decode_body, decode_query, path_chat_id
from service.schemas import SEND_MESSAGE_DECODER, HistoryPageQuery, MessageOut, Page, message_out
from service.streaming import stream_reply, wants_stream

routes = web.RouteTableDef()


@routes.post("/chats/messages/")
async def send_message(request: web.Request) -> web.StreamResponse:
    """Answers with the AI's message, or streams it as Server-Sent Events when asked (api.md Part C);
    402 before any generation when the chat cannot pay."""
    tenant = await tenant_of(request)
    body = decode_body(await request.read(), SEND_MESSAGE_DECODER, chat_id_field=True)
    chat_id = chat_id_from(body.chat_id)
    content = checked_content(body.content, request.app[SETTINGS].max_content_chars)
    if wants_stream(request, body.stream):
        return await stream_reply(request, tenant.config, chat_id, content)
    settlement = await request.app[EXCHANGE].send(tenant.config, chat_id, content)
    return json_response(message_out(chat_id, settlement.ai_message))


@routes.get("/chats/{chat_id}/messages/")
async def list_messages(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    chat_id = path_chat_id(request)
    query = _history_query(decode_query(request, HistoryPageQuery))
    page = await request.app[LEDGER].read_history(tenant.config_id, chat_id, query)
    items = [message_out(chat_id, message) for message in page.items]
    return json_response(
        Page[MessageOut](items=items, total=page.total, limit=query.limit, offset=query.offset)
    )


def _history_query(query: HistoryPageQuery) -> ledger.HistoryQuery:
    """Offset pagination (api.md Part A) or one cursor (Part C), never a mix."""
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
