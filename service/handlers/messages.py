"""POST /chats/messages/ (one exchange) and GET /chats/{chat_id}/messages/ (history pages), with the two
behaviours every route that sends a message or pages a history shares (the widget proxy, the admin API)."""

from __future__ import annotations

from aiohttp import web

import ledger
from service.appkeys import EXCHANGE, LEDGER, MODEL_CALLS
from service.handlers.common import json_response, tenant_of
from service.openapi import Doc, documented
from service.requests import chat_id_from, decode_body, history_query, message_request, path_chat_id
from service.schemas import (
    SEND_MESSAGE_DECODER,
    HistoryPageQuery,
    MessageOut,
    Page,
    SendMessageRequest,
    message_out,
)
from service.streaming import stream_reply, wants_stream

routes = web.RouteTableDef()


async def answer_message(
    request: web.Request,
    config: ledger.ConfigRecord,
    chat_id: str,
    content: str,
    idempotency: ledger.IdempotencyKey | None,
    *,
    stream: bool,
) -> web.StreamResponse:
    """Run one exchange and answer its message as JSON, or stream it as Server-Sent Events. A retry with
    the same Idempotency-Key gets the saved message as JSON, with no model call and no charge. A config
    with its share of this worker's model calls running gets 429 before anything is reserved."""
    try:
        with request.app[MODEL_CALLS].call(config):
            if stream:
                return await stream_reply(request, config, chat_id, content, idempotency)
            settlement = await request.app[EXCHANGE].send(config, chat_id, content, idempotency)
    except ledger.ExchangeReplayed as replay:
        # The first attempt may have been saved and never acknowledged (503 `not_replicated`).
        await request.app[LEDGER].confirm_durable(chat_id)
        return json_response(message_out(chat_id, replay.message))
    return json_response(message_out(chat_id, settlement.ai_message))


async def history_page(
    request: web.Request, config_id: str | None, chat_id: str, query: ledger.HistoryQuery
) -> web.Response:
    """A page of a chat's history, oldest first; `config_id` None reads any config's chat (admin)."""
    page = await request.app[LEDGER].read_history(config_id, chat_id, query)
    items = [message_out(chat_id, message) for message in page.items]
    return json_response(
        Page[MessageOut](items=items, total=page.total, limit=query.limit, offset=query.offset)
    )


@routes.post("/chats/messages/")
@documented(
    Doc(
        summary="Send a message; answers the AI's Message, or streams it as Server-Sent Events.",
        body=SendMessageRequest,
        response=MessageOut,
        description='Streams when the body says `"stream": true` or the Accept header names '
        "text/event-stream; a retry with the same Idempotency-Key gets the saved message as JSON.",
        errors=(402, 409, 429, 502, 504),
        media_types=("application/json", "text/event-stream"),
        idempotent=True,
    )
)
async def send_message(request: web.Request) -> web.StreamResponse:
    """Answers with the AI's message, or streams it when asked (api.md Part C); 402 before any
    generation when the chat cannot pay."""
    tenant = await tenant_of(request)
    body = decode_body(await request.read(), SEND_MESSAGE_DECODER, chat_id_field=True)
    chat_id = chat_id_from(body.chat_id)
    content, idempotency = message_request(request, chat_id, body.content)
    stream = wants_stream(request, body.stream)
    return await answer_message(request, tenant.config, chat_id, content, idempotency, stream=stream)


@routes.get("/chats/{chat_id}/messages/")
@documented(
    Doc(summary="Page a chat's history, oldest first.", query=HistoryPageQuery, response=Page[MessageOut])
)  # fmt: skip
async def list_messages(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    chat_id = path_chat_id(request)
    return await history_page(request, tenant.config_id, chat_id, history_query(request))
