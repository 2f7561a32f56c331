"""What every handler shares: the caller's tenant and the JSON response."""

from __future__ import annotations

from aiohttp import web

from service.appkeys import AUTH
from service.auth import Tenant
from service.schemas import ENCODER


async def tenant_of(request: web.Request) -> Tenant:
    return await request.app[AUTH].tenant(request)


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=ENCODER.encode(payload), status=status, content_type="application/json")
