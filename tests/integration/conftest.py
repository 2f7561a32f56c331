"""Fixtures of the ledger's concurrency tests: several workers, each its own Ledger on its own client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from redis.asyncio import Redis

from ledger import Keyspace, Ledger, connect
from tests.integration.helpers import WORKERS
from tests.redis_servers import RedisServer


@pytest_asyncio.fixture
async def worker_ledgers(
    real_redis: Redis, redis_server: RedisServer, keyspace: Keyspace
) -> AsyncIterator[list[Ledger]]:
    """One started Ledger per simulated worker, each on its own client; all closed afterwards."""
    clients = [connect(redis_server.url) for _ in range(WORKERS)]
    try:
        ledgers = [Ledger(client, keyspace) for client in clients]
        for ledger in ledgers:
            await ledger.start()
        yield ledgers
    finally:
        for client in clients:
            await client.aclose()
