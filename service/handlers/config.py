"""GET /chat-config/: the caller's config, for styling a chat UI (api.md Part A)."""

from __future__ import annotations

from aiohttp import web

from service.handlers.common import json_response, tenant_of
from service.openapi import Doc, documented
from service.schemas import ConfigOut, config_out

routes = web.RouteTableDef()


@routes.get("/chat-config/")
@documented(Doc(summary="The caller's config, for styling a chat UI.", response=ConfigOut))
async def get_chat_config(request: web.Request) -> web.Response:
    tenant = await tenant_of(request)
    return json_response(config_out(tenant.config))
