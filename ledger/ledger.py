"""class Ledger: one async method per business operation on chats (design.md sections 2-6).

The methods live by what they own: ledger/chats.py (whole chats, their listing and their journal) and
ledger/messages.py (the message flow and the history it writes); this module joins them and starts the
scripts. Every balance change happens inside a Lua script, so concurrent workers never race on a
read-modify-write. Every public method is wrapped in `wrap_redis_errors`, the one place a Redis
failure becomes LedgerUnavailable, so `service/` never sees a Redis exception.
"""

from __future__ import annotations

import redis.exceptions
from redis.asyncio import RedisCluster

from ledger.chats import Chats
from ledger.connection import RedisClient, durability_of
from ledger.context import context_source
from ledger.durable import CLUSTER_MARKER_TTL_MS
from ledger.errors import wrap_redis_errors
from ledger.export import Export
from ledger.keys import Keyspace
from ledger.limits import LedgerLimits
from ledger.messages import Messages
from ledger.retention import Retention
from ledger.scripts import Scripts


class Ledger(Chats, Messages, Retention, Export):
    """The chat ledger on one Redis client. Construct once per process; `start()` before use."""

    def __init__(self, redis: RedisClient, keys: Keyspace, limits: LedgerLimits | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits or LedgerLimits()
        self.scripts = Scripts(redis)
        self.context = context_source(self.scripts)

    @wrap_redis_errors
    async def start(self) -> None:
        """Load every script now, so a broken script or an unreachable Redis fails the boot."""
        await self.scripts.load_all()

    @wrap_redis_errors
    async def confirm_durable(self, chat_id: str) -> None:
        """With a durability (ledger/durable.py), return once a replica holds everything the chat's
        primary holds now, or raise NotReplicated: before a retry is answered from what its first
        attempt saved, which may have been written and never acknowledged. A marker write in the
        chat's slot, waited for; without a durability, nothing."""
        if durability_of(self.redis) is not None:
            await self.redis.set(self.keys.chat_durable_marker(chat_id), "", px=CLUSTER_MARKER_TTL_MS)

    @wrap_redis_errors
    async def ready(self) -> bool:
        """Redis answers and holds every script; a Redis restarted empty is made ready again here, since
        loading the scripts is what a first request would do anyway.

        On a cluster it only asks one node: with one primary down, the chats on the others still work,
        and calling every worker unready would let the load balancer turn a partial outage into a full
        one. A node that lost its scripts gets them back at the first call (NOSCRIPT -> SCRIPT LOAD)."""
        if isinstance(self.redis, RedisCluster):
            return await _any_primary_answers(self.redis)
        if not await self.scripts.loaded():
            await self.scripts.load_all()
        return True


async def _any_primary_answers(cluster: RedisCluster) -> bool:
    failure: Exception | None = None
    for node in cluster.get_primaries():
        try:
            return bool(await cluster.ping(target_nodes=node))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            failure = exc
    raise failure or redis.exceptions.ConnectionError("the cluster has no primaries")
