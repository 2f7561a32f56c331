"""CHATLEDGER_MESSAGE_DELAY_MS: a test and demo hook that holds every message request for a while.

The offline model answers at once, so a request is in flight for a few milliseconds only: too short to
show a graceful shutdown finishing the requests it was serving (issue 5), or a load balancer queueing
connections. With a delay, each `POST /chats/messages/` waits before it is handled; the whole exchange
(reserve, model, settle) then runs after the wait, so a request caught by a shutdown still needs Redis
and the model to finish. Never set it in production.

It is a middleware rather than a slower model so it works the same whatever the provider is.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.appkeys import SETTINGS

log = structlog.get_logger("chatledger")

_MESSAGES_PATH = "/chats/messages"


def install_message_delay(app: web.Application) -> None:
    """Add the delaying middleware when the setting asks for it (before the app is frozen)."""
    delay_ms = app[SETTINGS].message_delay_ms
    if delay_ms <= 0:
        return
    log.warning("message_delay", delay_ms=delay_ms, note="Test and demo hook: never set in production.")

    @web.middleware
    async def delay_messages(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and request.path.rstrip("/").endswith(_MESSAGES_PATH):
            # Logged as the wait begins, so a test can tell the request is in flight without sleeping.
            log.info("message_delayed", delay_ms=delay_ms)
            await asyncio.sleep(delay_ms / 1000)
        return await handler(request)

    app.middlewares.append(delay_messages)
