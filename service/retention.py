"""The background pass that erases soft-deleted chats past CHATLEDGER_DELETED_CHAT_RETENTION_S
(design.md section 12), started with the app when the setting is above 0.

Every worker runs the loop; a pass runs only in the worker that takes the turn (a key with a TTL), so
several workers do not erase the same chats at once. A pass erases at most PASS_CHATS_MAX chats, each
a short script of its own (and, until the deleted indexes are backfilled, reads at most
PASS_BACKFILL_MAX chats for that), and the next pass continues; a Redis failure is logged and the next
pass tries again, so the pass never takes a worker down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

import ledger
from service.appkeys import LEDGER, SETTINGS

log = structlog.get_logger("chatledger")

# Chats one pass erases at most: the rest waits for the next pass.
PASS_CHATS_MAX = 1000
# Chats one pass reads at most while it backfills the deleted indexes (chats deleted before those
# indexes existed; design.md section 12): the rest waits for the next pass.
PASS_BACKFILL_MAX = 10_000
# How long shutdown waits for a pass in progress before it cancels it.
STOP_WAIT_S = 5.0


async def retention_pass(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the loop runs while the app does, when retention is on. At shutdown it is asked
    to stop and given the end of its pass, rather than cancelled in the middle of a Redis command."""
    settings = app[SETTINGS]
    if settings.deleted_chat_retention_s <= 0:
        yield
        return
    stop = asyncio.Event()
    loop = _loop(app[LEDGER], settings.deleted_chat_retention_s, settings.retention_interval_s, stop)
    task = asyncio.create_task(loop)
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_WAIT_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _loop(book: ledger.Ledger, retention_s: float, interval_s: float, stop: asyncio.Event) -> None:
    holder = f"{os.getpid()}-{os.urandom(4).hex()}"
    cursor = 0
    while True:
        # Jittered, so workers started together do not all ask for the turn at the same moment.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s * random.uniform(0.5, 1.5))
        if stop.is_set():
            return
        try:
            if not await book.retention_turn(holder, int(interval_s * 1000)):
                continue
            cutoff_ms = int((time.time() - retention_s) * 1000)
            done = await book.erase_deleted_before(
                cutoff_ms, chats_max=PASS_CHATS_MAX, cursor=cursor, backfill_max=PASS_BACKFILL_MAX
            )
        except ledger.LedgerUnavailable as exc:
            log.warning("retention_pass_failed", error=str(exc))
            continue
        cursor = done.cursor
        if done.erased or done.backfilled:
            log.info("retention_pass", erased=done.erased, backfilled=done.backfilled)
