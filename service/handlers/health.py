"""GET /healthz (the process answers) and GET /readyz (Redis answers and holds the scripts, and the
worker is not saturated)."""

from __future__ import annotations

import msgspec
from aiohttp import web

import ledger
from service.admission import SATURATED_FOR_S
from service.appkeys import ADMISSION, LEDGER
from service.handlers.common import json_response
from service.openapi import Doc, documented

routes = web.RouteTableDef()


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    redis: bool | None = None
    # Requests this worker is serving (the readiness check itself not counted), and its cap.
    in_flight: int | None = None
    max_in_flight: int | None = None
    detail: str | None = None


@routes.get("/healthz")
@documented(Doc(summary="Liveness: the process answers.", response=Health, auth="none", tag="operations"))
async def healthz(_request: web.Request) -> web.Response:
    return json_response(Health("ok"))


@routes.get("/readyz")
@documented(
    Doc(summary="Readiness: the worker is below its in-flight cap, and Redis answers and holds the ledger "
        "scripts.", response=Health, other_responses=((503, Health),), auth="none", tag="operations")
)  # fmt: skip
async def readyz(request: web.Request) -> web.Response:
    """503 `saturated` while the worker is at its cap (or refused a request within the last second),
    without asking Redis: a load balancer then sends new requests to other workers, and takes this one
    back once its load drops. Otherwise 503 `unavailable` while Redis does not answer."""
    admission = request.app[ADMISSION]
    # This request is one of those in flight: the load is the others.
    in_flight, cap = admission.in_flight - 1, admission.limit
    if admission.saturated(own=1):
        detail = (
            f"The worker is at its in-flight cap ({cap}) or refused a request within the last "
            f"{SATURATED_FOR_S:g} s; new requests get 503 overloaded."
        )
        return json_response(
            Health("saturated", in_flight=in_flight, max_in_flight=cap, detail=detail), status=503
        )
    try:
        await request.app[LEDGER].ready()
    except ledger.LedgerUnavailable:
        unavailable = Health("unavailable", redis=False, in_flight=in_flight, max_in_flight=cap)
        return json_response(unavailable, status=503)
    return json_response(Health("ready", redis=True, in_flight=in_flight, max_in_flight=cap))
