"""Loads ledger/lua/*.lua once, registers each with the Redis client, and calls them by SHA.

One name runs from file to method: `reserve.lua` -> `Scripts.reserve` -> `Ledger.reserve()`. Redis
scripts cannot include each other, so the shared `_prelude.lua` (and the bounds from limits.py it needs)
is prepended to each script here; the SHA is of the whole text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

import redis.exceptions
from redis.commands.core import AsyncScript

from ledger.connection import RedisClient, multiplexer_of
from ledger.errors import store_failure
from ledger.limits import CONTEXT_TOKENS_KEPT, CONTEXT_TOKENS_SLACK, HISTORY_SKIP_CHUNK, REAP_BATCH_MAX
from ledger.multiplex import Command

SCRIPT_NAMES = (
    "create_chat",
    "reserve",
    "settle",
    "void",
    "top_up",
    "delete_chat",
    "restore_chat",
    "history",
    "rate_limit",
)


def _read(name: str) -> str:
    return files("ledger").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


def script_source(name: str) -> str:
    """The full text sent to Redis for one script: constants, prelude, then the script."""
    constants = (
        f"local REAP_BATCH_MAX = {REAP_BATCH_MAX}\nlocal HISTORY_SKIP_CHUNK = {HISTORY_SKIP_CHUNK}\n"
        f"local CONTEXT_TOKENS_KEPT = {CONTEXT_TOKENS_KEPT}\n"
        f"local CONTEXT_TOKENS_SLACK = {CONTEXT_TOKENS_SLACK}\n"
    )
    return constants + _read("_prelude") + "\n" + _read(name)


_SOURCES = {name: script_source(name) for name in SCRIPT_NAMES}


class Scripts:
    """The registered scripts of one client. `AsyncScript.__call__` already does EVALSHA, and on
    NOSCRIPT (a Redis restart or failover) SCRIPT LOAD and EVALSHA again; so does the client's
    multiplexer (ledger/multiplex.py), which runs the scripts when the client has one."""

    def __init__(self, redis: RedisClient, observe: Callable[[str, float], None] | None = None) -> None:
        self._redis = redis
        self.multiplexer = multiplexer_of(redis)
        # Called with (script name, seconds) after each `call`; ledger/ knows nothing of metrics.
        self.observe = observe
        self.create_chat: AsyncScript = redis.register_script(_SOURCES["create_chat"])
        self.reserve: AsyncScript = redis.register_script(_SOURCES["reserve"])
        self.settle: AsyncScript = redis.register_script(_SOURCES["settle"])
        self.void: AsyncScript = redis.register_script(_SOURCES["void"])
        self.top_up: AsyncScript = redis.register_script(_SOURCES["top_up"])
        self.delete_chat: AsyncScript = redis.register_script(_SOURCES["delete_chat"])
        self.restore_chat: AsyncScript = redis.register_script(_SOURCES["restore_chat"])
        self.history: AsyncScript = redis.register_script(_SOURCES["history"])
        self.rate_limit: AsyncScript = redis.register_script(_SOURCES["rate_limit"])

    async def call(
        self, name: str, *, keys: Sequence[str], args: Sequence[str | bytes | int | float] = ()
    ) -> Any:
        """Run script `name` and report its latency to `observe` (the service's metrics), if set.

        The reply is whatever the script returns: nested lists of str and int, decoded by the caller.
        A Redis failure raises LedgerUnavailable."""
        script: AsyncScript = getattr(self, name)
        started = time.perf_counter()
        try:
            if self.multiplexer is not None:
                return await self.multiplexer.evalsha(script.sha, _SOURCES[name], keys, args)
            return await script(keys=list(keys), args=list(args))
        except redis.exceptions.RedisError as exc:
            raise store_failure(exc) from exc
        finally:
            if self.observe is not None:
                self.observe(name, time.perf_counter() - started)

    async def call_then_read(
        self, name: str, *, keys: Sequence[str], args: Sequence[str | bytes | int | float], read: Command
    ) -> tuple[Any, Any]:
        """Run script `name`, then the read-only command `read`, in one transaction on the client's
        multiplexer (`multiplexer` must be set): one round trip, and the read sees the state the
        script left. Redis answers the read natively, which is much cheaper than a script reading the
        same data into Lua and returning it (issue 6: the reserve's context)."""
        assert self.multiplexer is not None, "call_then_read needs a multiplexed client"
        script: AsyncScript = getattr(self, name)
        started = time.perf_counter()
        try:
            return await self.multiplexer.evalsha_then(script.sha, _SOURCES[name], keys, args, read)
        except redis.exceptions.RedisError as exc:
            raise store_failure(exc) from exc
        finally:
            if self.observe is not None:
                self.observe(name, time.perf_counter() - started)

    async def loaded(self) -> bool:
        """Whether Redis holds every script (a restarted Redis has none until the next call loads it)."""
        shas = [getattr(self, name).sha for name in SCRIPT_NAMES]
        return all(await self._redis.script_exists(*shas))

    async def load_all(self) -> None:
        """SCRIPT LOAD every script, so a Lua error fails the boot rather than the first request."""
        for source in _SOURCES.values():
            await self._redis.script_load(source)
