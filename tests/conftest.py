"""Fixtures shared by every test directory: Redis backends, the ledger and the tenant store.

`redis_client` runs each test body on both backends (style.md 16): the embedded fakeredis, and a real
`redis-server` that one session fixture spawns on a free port. The real run carries the `redis` mark, so it
can be selected or deselected, but never skipped silently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from ledger import ConfigRecord, Keyspace, Ledger, TenantStore, connect, embedded_redis
from tests.redis_servers import RedisServer

BACKENDS = [
    pytest.param("fakeredis", id="fakeredis"),
    pytest.param("redis-server", marks=pytest.mark.redis, id="redis-server"),
]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session, on a free port, stopped at the end."""
    with RedisServer() as server:
        yield server


async def _fresh_client(client: Redis) -> AsyncIterator[Redis]:
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(params=BACKENDS)
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """An empty Redis on each backend: fakeredis, then the session's redis-server."""
    if request.param == "fakeredis":
        client = embedded_redis()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = connect(server.url)
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
async def ledger(redis_client: Redis, keyspace: Keyspace) -> Ledger:
    """A started ledger (scripts loaded) on the test's backend."""
    started = Ledger(redis_client, keyspace)
    await started.start()
    return started


@pytest.fixture
def tenants(redis_client: Redis, keyspace: Keyspace) -> TenantStore:
    """Configs and API keys on the test's backend."""
    return TenantStore(redis_client, keyspace)


@pytest_asyncio.fixture
async def config(tenants: TenantStore) -> ConfigRecord:
    """A config with the default weights (1.0 per prompt and per completion token)."""
    return await tenants.create_config(agent_name="Agent", company_name="Co")
