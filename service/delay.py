"""CHATLEDGER_MESSAGE_DELAY_MS: a test and demo hook that holds each message a client sends for a while.

The offline model answers at once, so a request is in flight for a few milliseconds only: too short to
show a graceful shutdown finishing the requests it was serving, or a load balancer queueing connections
(tests/scale/test_workers.py does both). With a delay, each message request waits before it is handled;
the whole exchange (reserve, model, settle) then runs after the wait, so a request caught by a shutdown
still needs Redis and the model to finish. Never set it in production.

The hook is explicit on both ends: workers.build_app installs it only when the setting is above zero, so
no production request passes through it, and it holds the requests routed to the handlers that send a
message (handlers.MESSAGE_SENDS), whatever path or base path they are mounted under. It is a middleware
rather than a slower model so it works the same whatever the provider is.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.appkeys import SETTINGS
from service.handlers import MESSAGE_SENDS

log = structlog.get_logger("chatledger")


def install_message_delay(app: web.Application) -> None:
    """Add the delaying middleware when the setting asks for it (before the app is frozen)."""
    delay_ms = app[SETTINGS].message_delay_ms
    if delay_ms <= 0:
        return
    log.warning("message_delay", delay_ms=delay_ms, note="Test and demo hook: never set in production.")

    @web.middleware
    async def delay_messages(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.handler in MESSAGE_SENDS:
            # Logged as the wait begins, so a test can tell the request is in flight without sleeping.
            log.info("message_delayed", delay_ms=delay_ms)
            await asyncio.sleep(delay_ms / 1000)
        return await handler(request)

    app.middlewares.append(delay_messages)
