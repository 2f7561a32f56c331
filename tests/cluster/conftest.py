"""A client of the session's Redis Cluster only, for the tests that are about the cluster itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import RedisCluster

from ledger import Keyspace, Ledger, TenantStore, connect_cluster
from tests.redis_servers import LocalRedisCluster, flush_all

pytestmark = pytest.mark.cluster


@pytest_asyncio.fixture
async def cluster_client(redis_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    """An empty cluster (FLUSHALL on every primary) and a fresh client of it."""
    client = connect_cluster(redis_cluster.url)
    await flush_all(client)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def cluster_ledger(cluster_client: RedisCluster) -> Ledger:
    started = Ledger(cluster_client, Keyspace("cltest"))
    await started.start()
    return started


@pytest.fixture
def cluster_tenants(cluster_client: RedisCluster) -> TenantStore:
    return TenantStore(cluster_client, Keyspace("cltest"))
