"""Fixtures shared by every test directory: Redis backends, the ledger and the tenant store.

`redis_client` runs each test body on three backends (style.md 16): the embedded fakeredis, a real
`redis-server` that one session fixture spawns on a free port, and a real Redis Cluster of three primaries
that another session fixture builds. The real runs carry the `redis` and `cluster` marks, so they
can be selected or deselected, but never skipped silently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import pytest
import pytest_asyncio
import structlog
from redis.asyncio import Redis

from ledger import (
    ConfigRecord,
    Keyspace,
    Ledger,
    RedisClient,
    TenantStore,
    connect,
    connect_cluster,
    embedded_redis,
)
from tests.redis_servers import LocalRedisCluster, RedisServer, flush_all

# A single-node client stays typed as one (real_redis), any backend as the union (redis_client).
C = TypeVar("C", Redis, RedisClient)

BACKENDS = [
    pytest.param("fakeredis", id="fakeredis"),
    pytest.param("redis-server", marks=pytest.mark.redis, id="redis-server"),
    pytest.param("redis-cluster", marks=pytest.mark.cluster, id="redis-cluster"),
]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session, on a free port, stopped at the end."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster (three primaries) for the whole session, stopped at the end."""
    with LocalRedisCluster() as cluster:
        yield cluster


async def _fresh_client(client: C) -> AsyncIterator[C]:
    await flush_all(client)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(params=BACKENDS)
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[RedisClient]:
    """An empty Redis on each backend: fakeredis, the session's redis-server, the session's cluster."""
    client: RedisClient
    if request.param == "fakeredis":
        client = embedded_redis()
    elif request.param == "redis-server":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = connect(server.url)
    else:
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        client = connect_cluster(cluster.url)
    async for fresh in _fresh_client(client):
        yield fresh


@pytest_asyncio.fixture
async def real_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """An empty client of the session's redis-server only."""
    async for fresh in _fresh_client(connect(redis_server.url)):
        yield fresh


@pytest.fixture
def keyspace() -> Keyspace:
    """Key names under a test prefix, so a stray key is easy to tell apart."""
    return Keyspace("cltest")


@pytest_asyncio.fixture
async def ledger(redis_client: RedisClient, keyspace: Keyspace) -> Ledger:
    """A started ledger (scripts loaded) on the test's backend."""
    started = Ledger(redis_client, keyspace)
    await started.start()
    return started


@pytest.fixture
def tenants(redis_client: RedisClient, keyspace: Keyspace) -> TenantStore:
    """Configs and API keys on the test's backend."""
    return TenantStore(redis_client, keyspace)


@pytest_asyncio.fixture
async def config(tenants: TenantStore) -> ConfigRecord:
    """A config with the default weights (1.0 per prompt and per completion token)."""
    return await tenants.create_config(agent_name="Agent", company_name="Co")


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Undo any structlog configuration a test made (the CLI configures logging in-process), so the
    next test's capture_logs sees every event."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
