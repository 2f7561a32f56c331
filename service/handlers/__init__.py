"""Route tables of the API, in mounting order (see service/routing.py)."""

from __future__ import annotations

from aiohttp import web

from service.handlers import (
    admin,
    admin_data,  # noqa: F401  (its routes join admin.routes when it is imported)
    chats,
    config,
    health,
    messages,
    operations,
    tokens,
    widget_files,
    widget_proxy,
)

# The handlers that send a message: what the test and demo delay (service/delay.py) holds.
MESSAGE_SENDS = frozenset({messages.send_message, widget_proxy.send_message})


def all_routes() -> list[web.RouteTableDef]:
    # messages before chats: `/chats/messages/` is literal, `/chats/{chat_id}` is not.
    return [
        health.routes, operations.routes, config.routes, messages.routes, tokens.routes, chats.routes,
        admin.routes, widget_files.routes, widget_proxy.routes,
    ]  # fmt: skip
