"""GET /metrics (Prometheus), GET /openapi.json and GET /docs (the API reference)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service import openapi
from service.appkeys import METRICS, SETTINGS
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
@documented(
    Doc(summary="The API reference page (Swagger UI, served by this server).", auth="none", tag="operations",
        media_types=("text/html",))
)  # fmt: skip
async def docs(request: web.Request) -> web.Response:
    return openapi.docs_page(request.app[SETTINGS].api_prefix)


@routes.get("/docs/assets/{name}")
@documented(
    Doc(summary="A file of the reference page.", errors=(404,), auth="none", tag="operations",
        media_types=("text/javascript", "text/css"))
)  # fmt: skip
async def docs_asset(request: web.Request) -> web.Response:
    return openapi.docs_asset(request.match_info["name"], request.headers.get("Accept-Encoding", ""))
