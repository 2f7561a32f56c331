"""The chat widget's files: its script, and a demo page that embeds it.

    GET  /widget/widget.js    the widget, one file of plain JavaScript
    GET  /widget/             a demo page that embeds it

The script is served even with no widget key: it holds nothing secret, and an operator who runs a proxy
of their own can still load it from here. The demo page needs the proxy (widget_proxy.py), so it
answers 404 when the proxy does.
"""

from __future__ import annotations

import html

from aiohttp import web

from service import widget as widget_files
from service.appkeys import SETTINGS
from service.handlers.widget_proxy import widget_of
from service.openapi import Doc, documented
from service.widget import Asset

routes = web.RouteTableDef()

# The demo page's policy: scripts from this origin only, so nothing a message could carry ever runs.
_DEMO_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' https: http: data:; "
    "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PREFIX_MARK = "__CHATLEDGER_PREFIX__"


def _asset_response(request: web.Request, asset: Asset, body: bytes | None = None) -> web.Response:
    if body is None and asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={"ETag": asset.etag})
    response = web.Response(body=asset.body if body is None else body, content_type=asset.content_type)
    response.charset = "utf-8"
    # Revalidated on every load (the ETag makes that a 304), so an upgrade reaches browsers at once.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if body is None:
        response.headers["ETag"] = asset.etag
    return response


@routes.get("/widget/widget.js")
@documented(
    Doc(summary="The chat widget: one script to embed.", auth="none", tag="widget",
        errors=(304,), media_types=("text/javascript",))
)  # fmt: skip
async def widget_script(request: web.Request) -> web.Response:
    return _asset_response(request, widget_files.SCRIPT)


@routes.get("/widget/")
@documented(
    Doc(summary="A demo page embedding the chat widget.", errors=(404,), auth="none", tag="widget",
        media_types=("text/html",))
)  # fmt: skip
async def demo_page(request: web.Request) -> web.Response:
    widget_of(request)
    prefix = html.escape(request.app[SETTINGS].api_prefix)
    page = widget_files.DEMO_PAGE.body.decode().replace(_PREFIX_MARK, prefix).encode()
    response = _asset_response(request, widget_files.DEMO_PAGE, page)
    response.headers["Content-Security-Policy"] = _DEMO_PAGE_CSP
    return response
