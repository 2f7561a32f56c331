"""Mounting route tables under the base path, each path in both slash forms (api.md Part B 1).

Both forms are routed directly rather than redirected: a redirect loses the method, the body and,
in many clients, the X-API-Key header.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web


def slash_forms(path: str) -> list[str]:
    """`/chats/` -> [`/chats/`, `/chats`]; `/chats/by-config-id` -> [it, `/chats/by-config-id/`]."""
    if path.endswith("/"):
        return [path, path.rstrip("/")]
    return [path, path + "/"]


def mount(app: web.Application, tables: Iterable[web.RouteTableDef], prefix: str) -> None:
    """Add every route of `tables` under `prefix`, in table order: literal paths such as
    `/chats/by-config-id` must come before `/chats/{chat_id}`."""
    for table in tables:
        for route in table:
            assert isinstance(route, web.RouteDef), "tables hold routes only"
            for path in slash_forms(prefix + route.path):
                app.router.add_route(route.method, path, route.handler)
