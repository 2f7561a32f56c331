"""GET /healthz (the process answers) and GET /readyz (Redis answers)."""

from __future__ import annotations

from aiohttp import web

import ledger
from service.appkeys import LEDGER
from service.handlers.common import json_response

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[LEDGER].ping()
    except ledger.LedgerUnavailable:
        return json_response({"status": "unavailable", "redis": False}, status=503)
    return json_response({"status": "ready", "redis": True})
