"""POST /chats/, GET /chats/by-config-id, GET /chats/{chat_id} (Part C), DELETE /chats/{chat_id}."""

from __future__ import annotations

from aiohttp import web

import ledger
from service.appkeys import LEDGER
from service.handlers.common import json_response, tenant_of
from service.openapi import Doc, documented
from service.requests import amount_milli, decode_body, decode_query, idempotency_key, path_chat_id
from service.schemas import CREATE_CHAT_DECODER, ChatListQuery, ChatOut, CreateChatRequest, Page, chat_out

routes = web.RouteTableDef()


@routes.post("/chats/")
@documented(
    Doc(summary="Create a chat with a token budget.", body=CreateChatRequest, response=ChatOut,
        idempotent=True)
)  # fmt: skip
async def create_chat(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    body = decode_body(await request.read(), CREATE_CHAT_DECODER)
    limit_milli = amount_milli(body.token_limit, positive=False, field="token_limit")
    idempotency = idempotency_key(request, "create_chat", str(limit_milli))
    chat = await request.app[LEDGER].create_chat(tenant.config, limit_milli, idempotency=idempotency)
    return json_response(chat_out(chat))


@routes.get("/chats/by-config-id")
@documented(
    Doc(summary="Page the caller's chats, oldest first.", query=ChatListQuery, response=Page[ChatOut])
)
async def list_chats(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    query = decode_query(request, ChatListQuery)
    page = await request.app[LEDGER].list_chats(
        tenant.config_id, offset=query.offset, limit=query.limit, include_deleted=query.include_deleted
    )
    items = [chat_out(chat) for chat in page.items]
    return json_response(Page[ChatOut](items=items, total=page.total, limit=query.limit, offset=query.offset))


async def live_chat(request: web.Request, config_id: str, chat_id: str) -> ledger.ChatState:
    """The chat, or 404 chat_deleted once it is deleted, as on every other route (api.md Part B 9); the
    DELETE answer, `include_deleted=true` and the admin API still show a deleted chat."""
    chat = await request.app[LEDGER].get_chat(config_id, chat_id)
    if chat.deleted:
        raise ledger.ChatDeleted()
    return chat


@routes.get("/chats/{chat_id}")
@documented(Doc(summary="Read a chat (404 chat_deleted once deleted).", response=ChatOut))
async def get_chat(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    return json_response(chat_out(await live_chat(request, tenant.config_id, path_chat_id(request))))


@routes.delete("/chats/{chat_id}")
@documented(Doc(summary="Soft-delete a chat; answers it with deleted: true.", response=ChatOut))
async def delete_chat(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    chat = await request.app[LEDGER].delete_chat(tenant.config_id, path_chat_id(request))
    return json_response(chat_out(chat))
