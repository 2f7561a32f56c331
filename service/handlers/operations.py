"""GET /metrics (Prometheus), GET /openapi.json and GET /docs (the API reference)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service import openapi
from service.appkeys import METRICS
from service.openapi import Doc, documented

routes = web.RouteTableDef()


@routes.get("/metrics")
@documented(Doc(summary="Prometheus metrics.", auth="none", tag="operations", media_types=("text/plain",)))
async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@routes.get("/openapi.json")
@documented(Doc(summary="This API's OpenAPI 3.1 document.", auth="none", tag="operations"))
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.build(request.app))


@routes.get("/docs")
@documented(Doc(summary="The API reference page.", auth="none", tag="operations", media_types=("text/html",)))
async def docs(_request: web.Request) -> web.Response:
    return web.Response(text=openapi.docs_page(), content_type="text/html")
