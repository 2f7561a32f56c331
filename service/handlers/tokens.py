"""PUT /chats/{chat_id}/tokens/: add to a chat's limit (api.md Part A: the amount is added, not set)."""

from __future__ import annotations

from aiohttp import web

from service.appkeys import LEDGER
from service.handlers.common import json_response, tenant_of
from service.openapi import Doc, documented
from service.requests import amount_milli, decode_body, idempotency_key, path_chat_id
from service.schemas import ADD_TOKENS_DECODER, AddTokensRequest, ChatOut, chat_out

routes = web.RouteTableDef()


@routes.put("/chats/{chat_id}/tokens/")
@documented(
    Doc(summary="Add tokens to a chat's limit.", body=AddTokensRequest, response=ChatOut, idempotent=True)
)
async def add_tokens(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    chat_id = path_chat_id(request)
    body = decode_body(await request.read(), ADD_TOKENS_DECODER)
    add_milli = amount_milli(body.additional_tokens, positive=True, field="additional_tokens")
    idempotency = idempotency_key(request, "top_up", chat_id, str(add_milli))
    chat = await request.app[LEDGER].top_up(tenant.config_id, chat_id, add_milli, idempotency=idempotency)
    return json_response(chat_out(chat))
