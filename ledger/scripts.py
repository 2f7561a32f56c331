"""Loads ledger/lua/*.lua once, registers each with the Redis client, and calls them by SHA.

One name runs from file to method: `reserve.lua` -> `Scripts.reserve` -> `Ledger.reserve()`. Redis
scripts cannot include each other, so the shared `_prelude.lua` is prepended to each script here, after
the constants it shares with Python (the bounds from limits.py and the values of ContextMode), so each
has one source; the SHA is of the whole text. Replies are decoded by ledger/replies.py.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

from redis.commands.core import AsyncScript

from ledger.connection import RedisClient, group_commit_of, multiplexer_of
from ledger.limits import (
    CONTEXT_TOKENS_KEPT,
    CONTEXT_TOKENS_SLACK,
    ERASE_RECORDS_MAX,
    HISTORY_SKIP_CHUNK,
    HOLD_REPLY_FLOOR_TOKENS,
    JOURNAL_FOLD_BATCH,
    JOURNAL_KEPT,
    REAP_BATCH_MAX,
    RESOLVED_BYTES,
)
from ledger.multiplex import Command

SCRIPT_NAMES = (
    "create_chat",
    "reserve",
    "settle",
    "void",
    "top_up",
    "delete_chat",
    "restore_chat",
    "inspect_chat",
    "history",
    "rate_limit",
    "erase_chat",
)
# The scripts that move money or history: with a durability, each waits for a replica's acknowledgement
# (ledger/durable.py). A reserve does not: a hold lost with its primary is caught by the settle, which
# then finds no reservation and charges nothing.
# An erasure waits too: acknowledged, it must not come back with a promoted replica.
DURABLE_SCRIPTS = frozenset(
    {"create_chat", "settle", "void", "top_up", "delete_chat", "restore_chat", "erase_chat"}
)


class ContextMode(enum.StrEnum):
    """How a reserve gets its context: reserve.lua's ARGV[4], known to the Lua as CONTEXT_<NAME>."""

    # The reply carries the context's entries: for a client that cannot read them in the script's
    # transaction at no extra round trip (a Redis Cluster, the embedded fakeredis).
    IN_REPLY = "in_reply"
    # The reply says how many of the newest entries the context is; the caller reads them itself.
    READ_BY_CALLER = "read_by_caller"
    # As READ_BY_CALLER, and the caller priced the messages it holds up to the id it sends: the
    # script takes that pricing when that id is still the chat's newest, and prices the chat otherwise.
    PRICED_BY_CALLER = "priced_by_caller"


def _read(name: str) -> str:
    return files("ledger").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


def script_source(name: str) -> str:
    """The full text sent to Redis for one script: constants, prelude, then the script."""
    constants = (
        f"local REAP_BATCH_MAX = {REAP_BATCH_MAX}\nlocal HISTORY_SKIP_CHUNK = {HISTORY_SKIP_CHUNK}\n"
        f"local CONTEXT_TOKENS_KEPT = {CONTEXT_TOKENS_KEPT}\n"
        f"local CONTEXT_TOKENS_SLACK = {CONTEXT_TOKENS_SLACK}\n"
        f"local ERASE_RECORDS_MAX = {ERASE_RECORDS_MAX}\n"
        f"local JOURNAL_KEPT = {JOURNAL_KEPT}\nlocal JOURNAL_FOLD_BATCH = {JOURNAL_FOLD_BATCH}\n"
        f"local RESOLVED_BYTES = {RESOLVED_BYTES}\n"
        f"local HOLD_REPLY_FLOOR_TOKENS = {HOLD_REPLY_FLOOR_TOKENS}\n"
    ) + "".join(f"local CONTEXT_{mode.name} = '{mode.value}'\n" for mode in ContextMode)
    return constants + _read("_prelude") + "\n" + _read(name)


_SOURCES = {name: script_source(name) for name in SCRIPT_NAMES}


class Scripts:
    """The registered scripts of one client. `AsyncScript.__call__` already does EVALSHA, and on
    NOSCRIPT (a Redis restart or failover) SCRIPT LOAD and EVALSHA again; so does the client's
    multiplexer (ledger/multiplex.py), which runs the scripts when the client has one."""

    def __init__(self, redis: RedisClient, observe: Callable[[str, float], None] | None = None) -> None:
        self._redis = redis
        self.multiplexer = multiplexer_of(redis)
        self.group_commit = group_commit_of(redis)
        # Called with (script name, seconds) after each `call`; ledger/ knows nothing of metrics.
        self.observe = observe
        self.create_chat: AsyncScript = redis.register_script(_SOURCES["create_chat"])
        self.reserve: AsyncScript = redis.register_script(_SOURCES["reserve"])
        self.settle: AsyncScript = redis.register_script(_SOURCES["settle"])
        self.void: AsyncScript = redis.register_script(_SOURCES["void"])
        self.top_up: AsyncScript = redis.register_script(_SOURCES["top_up"])
        self.delete_chat: AsyncScript = redis.register_script(_SOURCES["delete_chat"])
        self.restore_chat: AsyncScript = redis.register_script(_SOURCES["restore_chat"])
        self.inspect_chat: AsyncScript = redis.register_script(_SOURCES["inspect_chat"])
        self.history: AsyncScript = redis.register_script(_SOURCES["history"])
        self.rate_limit: AsyncScript = redis.register_script(_SOURCES["rate_limit"])
        self.erase_chat: AsyncScript = redis.register_script(_SOURCES["erase_chat"])

    async def call(
        self, name: str, *, keys: Sequence[str], args: Sequence[str | bytes | int | float] = ()
    ) -> Any:
        """Run script `name` and report its latency to `observe` (the service's metrics), if set.

        The reply is whatever the script returns: nested lists of str and int, for ledger/replies.py
        to decode. A Redis failure raises redis-py's exception, which the Ledger's methods wrap."""
        script: AsyncScript = getattr(self, name)
        started = time.perf_counter()
        try:
            if self.group_commit is not None and name in DURABLE_SCRIPTS:
                return await self.group_commit.evalsha(script.sha, _SOURCES[name], keys, args)
            if self.multiplexer is not None:
                return await self.multiplexer.evalsha(script.sha, _SOURCES[name], keys, args)
            return await script(keys=list(keys), args=list(args))
        finally:
            if self.observe is not None:
                self.observe(name, time.perf_counter() - started)

    async def call_then_read(
        self, name: str, *, keys: Sequence[str], args: Sequence[str | bytes | int | float], read: Command
    ) -> tuple[Any, Any]:
        """Run script `name`, then the read-only command `read`, in one transaction on the client's
        multiplexer (`multiplexer` must be set): one round trip, and the read sees the state the
        script left. Redis answers the read natively, which is cheaper than a script reading the same
        data into Lua tables and returning it."""
        assert self.multiplexer is not None, "call_then_read needs a multiplexed client"
        script: AsyncScript = getattr(self, name)
        started = time.perf_counter()
        try:
            return await self.multiplexer.evalsha_then(script.sha, _SOURCES[name], keys, args, read)
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
