"""Redis clients: a real server from a URL, a Redis Cluster from a URL, or the embedded in-process one.

The embedded Redis is fakeredis with Lua (lupa): the same scripts run on it, in one process, and its data
is gone when the process exits. It exists so a newcomer needs no Redis server (design.md section 9).

A cluster client runs the same scripts because every chat script touches one slot (ledger/keys.py).
MOVED and ASK redirections, topology refreshes after a failover, and loading a script on a node that lacks
it (NOSCRIPT) are redis-py's job; nothing here retries by hand.
"""

from __future__ import annotations

from typing import TypeAlias

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from ledger.multiplex import Multiplexer

# What every ledger class accepts: one node (or the embedded fakeredis), or a Redis Cluster. Every chat
# script touches one slot (ledger/keys.py), so both run the same scripts.
RedisClient: TypeAlias = Redis | RedisCluster

# How long a command waits for a free pooled connection before it fails (and the API answers 503). A
# burst above the pool size then queues briefly instead of failing at once.
POOL_WAIT_S = 5.0


class PipelinedRedis(Redis):
    """A client for one node whose ledger scripts share one pipelined connection (ledger/multiplex.py),
    because a pooled connection per script call costs most of a worker's time under load; every other
    command uses the pool. Closing the client closes both."""

    multiplexer: Multiplexer | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.multiplexer is not None:
            await self.multiplexer.aclose()
        await super().aclose(close_connection_pool)


def connect(url: str, *, max_connections: int = 100) -> Redis:
    """A pooled client for one Redis node. One per process: never per request.

    The pool blocks (up to POOL_WAIT_S) when all its connections are busy: redis-py's default pool raises
    "Too many connections" at once, which would turn a short burst into 503s. The ledger's scripts do
    not take pooled connections: they share the client's multiplexer, when the URL allows one."""
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        health_check_interval=30,
    )
    # As Redis.from_pool does: the client owns the pool and closes it.
    client = PipelinedRedis(connection_pool=pool)
    client.auto_close_connection_pool = True
    # The URL, not the pool, says where the multiplexer connects (the pool's options are redis-py's
    # internals); it decodes replies as the pool's decode_responses=True does.
    client.multiplexer = Multiplexer.for_url(url, encoding="utf-8")
    return client


def multiplexer_of(client: RedisClient) -> Multiplexer | None:
    """The client's multiplexer, if it has one (a `connect` client of a plain TCP node)."""
    return client.multiplexer if isinstance(client, PipelinedRedis) else None


def connect_cluster(url: str, *, max_connections: int = 100) -> RedisCluster:
    """A client for a Redis Cluster, given any one node's URL (the rest are discovered).

    `max_connections` is per node. redis-py's cluster client has no blocking pool: a worker must not run
    more concurrent commands against one node than this, which the load balancer's per-worker connection
    limit ensures (deploy/haproxy.cfg)."""
    return RedisCluster.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        health_check_interval=30,
    )


def embedded_redis() -> Redis:
    """An in-process Redis with Lua scripting, for the embedded default and the fast tests."""
    client: Redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    return client


def is_cluster(client: RedisClient) -> bool:
    """A Redis Cluster client: its pipelines refuse scripts and send each node's commands concurrently,
    so work that must be ordered across slots needs separate round trips there."""
    return isinstance(client, RedisCluster)
