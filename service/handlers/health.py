"""GET /healthz (the process answers) and GET /readyz (Redis answers and holds the scripts)."""

from __future__ import annotations

import msgspec
from aiohttp import web

import ledger
from service.appkeys import LEDGER
from service.handlers.common import json_response
from service.openapi import Doc, documented

routes = web.RouteTableDef()


class Health(msgspec.Struct):
    status: str
    redis: bool | None = None


@routes.get("/healthz")
@documented(Doc(summary="Liveness: the process answers.", response=Health, auth="none", tag="operations"))
async def healthz(_request: web.Request) -> web.Response:
    return json_response(Health("ok"))


@routes.get("/readyz")
@documented(
    Doc(summary="Readiness: Redis answers and holds the ledger scripts.", response=Health,
        other_responses=((503, Health),), auth="none", tag="operations")
)  # fmt: skip
async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[LEDGER].ready()
    except ledger.LedgerUnavailable:
        return json_response(Health("unavailable", redis=False), status=503)
    return json_response(Health("ready", redis=True))
