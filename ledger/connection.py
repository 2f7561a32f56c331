"""Redis clients: a real server from a URL, or the embedded in-process one for a first run.

The embedded Redis is fakeredis with Lua (lupa): the same scripts run on it, in one process, and its data
is gone when the process exits. It exists so a newcomer needs no Redis server (design.md section 9).
"""

from __future__ import annotations

from typing import TypeAlias

import fakeredis
from redis.asyncio import Redis, RedisCluster

# What every ledger class accepts: one node (or the embedded fakeredis), or a Redis Cluster. Every chat
# script touches one slot (ledger/keys.py), so both run the same scripts.
RedisClient: TypeAlias = Redis | RedisCluster


def connect(url: str, *, max_connections: int = 100) -> Redis:
    """A pooled client for a real Redis. One per process: never per request."""
    return Redis.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        health_check_interval=30,
    )


def embedded_redis() -> Redis:
    """An in-process Redis with Lua scripting, for the embedded default and the fast tests."""
    client: Redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    return client
