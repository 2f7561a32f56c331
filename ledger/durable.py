"""Durability: a write is acknowledged only once a replica holds it (`CHATLEDGER_DURABILITY=replica`).

Redis replicates asynchronously: a primary that dies loses what it acknowledged and had not shipped yet.
`WAIT n t`, sent on the connection that made a write, answers once `n` replicas have acknowledged
everything that connection wrote, or after `t` ms with how many did. So every write that moves money or
history is followed by WAIT in the same write to the socket (one round trip plus the replica's
acknowledgement), and answers ReplicaTimeout when no replica confirmed it: the write is on the primary,
and whether it survives the primary's loss is unknown, which the service answers as 503 `not_replicated`.

WAIT counts the acknowledgement of the connection's own last write, and a write that changed nothing (a
retry answered from its idempotency record, a ZADD NX of an existing entry) is not one: its WAIT would
not cover the first attempt, written on another connection and perhaps not replicated yet. So a marker
write goes before each WAIT (`MARKER`: a PUBLISH, which replicates and touches no key; on a cluster, where
PUBLISH does not replicate, a short-lived key in the write's own slot).

Two paths, both here or in ledger/connection.py, so no ledger method knows about WAIT:
- The ledger's write scripts go through `GroupCommit`, on a multiplexed connection of their own: a WAIT
  blocks its connection, so the reads and reserves on the shared multiplexer must not queue behind it.
  Writes that arrive while a WAIT is out are sent together with the next one (group commit): with a
  replica down, each timeout fails one group, not one write after another.
- Every other write command (config and key changes, index entries, pipelines) is pipelined with WAIT
  on one pooled connection (`PipelinedRedis`, `DurablePipeline`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ledger.multiplex import Command, Multiplexer, error_for, raise_error

# Commands that change data, as the ledger and the service send them: pipelined with WAIT when durable.
# A script counts as a write: the ledger's read-only scripts take the multiplexer, which does not come
# here; on a client without one (TLS, a Unix socket) they wait too, which costs time and nothing else.
WRITE_COMMANDS = frozenset({
    "SET", "SETNX", "SETEX", "PSETEX", "GETDEL", "GETSET", "DEL", "UNLINK", "RENAME", "RENAMENX",
    "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST", "INCR", "INCRBY", "DECR", "DECRBY",
    "HSET", "HSETNX", "HMSET", "HDEL", "HINCRBY", "SADD", "SREM", "SMOVE", "ZADD", "ZREM", "ZINCRBY",
    "ZREMRANGEBYSCORE", "ZREMRANGEBYRANK", "LPUSH", "RPUSH", "LPOP", "RPOP", "LREM", "LTRIM",
    "XADD", "XDEL", "XTRIM", "EVAL", "EVALSHA", "FCALL", "COPY", "RESTORE",
})  # fmt: skip


# Published before each WAIT (see above); nothing subscribes to it.
MARKER = ("PUBLISH", "chatledger:durable", "")
# On a cluster: the marker key's name after the write's hash tag, and how long it lives.
CLUSTER_MARKER_SUFFIX = ":chatledger-durable"
CLUSTER_MARKER_TTL_MS = 1000


class ReplicaTimeout(RedisError):
    """Fewer replicas than asked acknowledged a write within the timeout (ledger/errors.py turns it
    into NotReplicated): the write is on the primary, and may or may not outlive it."""


class Durability(msgspec.Struct, frozen=True):
    """WAIT's arguments: how many replicas must acknowledge, and how long to wait for them."""

    replicas: int
    timeout_ms: int

    def command(self) -> tuple[str, int, int]:
        return ("WAIT", self.replicas, self.timeout_ms)

    def commands(self) -> list[tuple[str | int, ...]]:
        """What follows the writes on their connection: the marker, then WAIT."""
        return [MARKER, self.command()]

    def check(self, acknowledged: Any) -> None:
        """Raise ReplicaTimeout when WAIT's answer is below `replicas`."""
        if int(acknowledged) < self.replicas:
            raise ReplicaTimeout(
                f"{acknowledged} of {self.replicas} replicas acknowledged the write "
                f"within {self.timeout_ms} ms."
            )


def cluster_marker(key: str) -> str:
    """A marker key in `key`'s slot: its hash tag, or the whole key when it has none."""
    start = key.find("{")
    end = key.find("}", start + 1)
    tag = key[start + 1 : end] if start != -1 and end > start + 1 else key
    return "{" + tag + "}" + CLUSTER_MARKER_SUFFIX


def is_write(command: Sequence[Any]) -> bool:
    name = command[0]
    text = name.decode() if isinstance(name, bytes) else str(name)
    return text.upper() in WRITE_COMMANDS


class _Write:
    __slots__ = ("command", "future", "source")

    def __init__(self, command: Command, source: str, future: asyncio.Future[Any]) -> None:
        self.command = command
        self.source = source
        self.future = future


class GroupCommit:
    """Durable script calls: each group of calls is written with one WAIT behind it, and at most one
    group is out at a time (a WAIT blocks its connection, so a second one would queue behind it in
    Redis anyway). A script that Redis lacks (NOSCRIPT: it did not run) is loaded and goes in the next
    group; no other call is ever sent twice, since a lost reply leaves unknown whether it ran."""

    def __init__(self, multiplexer: Multiplexer, durability: Durability) -> None:
        self.multiplexer = multiplexer
        self.durability = durability
        self._queue: list[_Write] = []
        self._drainer: asyncio.Task[None] | None = None

    async def evalsha(
        self, sha: str, source: str, keys: Sequence[str], args: Sequence[str | bytes | int | float]
    ) -> Any:
        """The script's reply once a replica acknowledged it; ReplicaTimeout when none did in time."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(("EVALSHA", sha, len(keys), *keys, *args), source, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def aclose(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
        await self.multiplexer.aclose()

    async def _drain(self) -> None:
        group: list[_Write] = []
        try:
            while self._queue:
                group, self._queue = self._queue, []
                await self._send(group)
        except asyncio.CancelledError:
            closed = RedisConnectionError("Connection to Redis closed by the client.")
            _fail(group, closed)
            _fail(self._queue, closed)
            raise

    async def _send(self, group: list[_Write]) -> None:
        commands = [write.command for write in group]
        try:
            replies = await self.multiplexer.execute_many([*commands, *self.durability.commands()])
            self.durability.check(raise_error(replies[-1]))
            failure: RedisError | None = None
        except RedisError as exc:
            if not isinstance(exc, ReplicaTimeout):
                _fail(group, exc)
                return
            failure = exc
        missing = [w for w, reply in zip(group, replies, strict=False) if _is_noscript(reply)]
        for write, reply in zip(group, replies, strict=False):
            if write in missing or write.future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                write.future.set_exception(error_for(str(reply)))
            elif failure is not None:
                write.future.set_exception(ReplicaTimeout(str(failure)))
            else:
                write.future.set_result(reply)
        if missing:
            await self._reload(missing)

    async def _reload(self, missing: list[_Write]) -> None:
        try:
            for source in {write.source for write in missing}:
                await self.multiplexer.execute("SCRIPT", "LOAD", source)
        except RedisError as exc:
            _fail(missing, exc)
            return
        self._queue[:0] = missing


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


def _fail(writes: list[_Write], error: RedisError) -> None:
    for write in writes:
        if not write.future.done():
            write.future.set_exception(error)
    writes.clear()
