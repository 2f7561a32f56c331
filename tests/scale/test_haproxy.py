"""Three workers behind a real HAProxy (deploy/run-local.sh): 1,000 concurrent messages to 20 chats with
tight budgets, on a single Redis and on a Redis Cluster.

Whatever worker each message lands on, and however the reservations interleave, no chat may spend past
its limit, every 200's charge must be in token_used exactly once, and each success must be in the history
as a whole user/reply pair.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp
import pytest
import pytest_asyncio

from ledger import Keyspace, RedisClient, TenantStore, connect, connect_cluster
from tests.redis_servers import LocalRedisCluster, RedisServer, flush_all, free_ports
from tests.scale.conftest import LocalDeployment

CHATS = 20
MESSAGES = 1_000
WORKERS = 3
# Tight: a chat pays for a fraction of its 50 messages (a reply costs 40-odd tokens plus the history).
TOKEN_LIMIT = 3_000.0
MAX_OUTPUT_TOKENS = 40
# Connections the test client opens at most; the other sends wait in the client's queue.
CLIENT_CONNECTIONS = 200
PREFIX = "clscale"
KEYS = Keyspace(PREFIX)


def milli(tokens: float) -> int:
    return round(tokens * 1000)


@pytest_asyncio.fixture(
    params=[
        pytest.param("redis-server", marks=pytest.mark.redis, id="redis-server"),
        pytest.param("redis-cluster", marks=pytest.mark.cluster, id="redis-cluster"),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RedisClient, dict[str, str]]]:
    """An empty Redis (a node or the cluster) and the setting that points the workers at it."""
    client: RedisClient
    if request.param == "redis-server":
        server: RedisServer = request.getfixturevalue("redis_server")
        client, setting = connect(server.url), {"REDIS_URL": server.url}
    else:
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        client, setting = connect_cluster(cluster.url), {"REDIS_CLUSTER_URL": cluster.url}
    await flush_all(client)
    try:
        yield client, setting
    finally:
        await client.aclose()


class Sent(NamedTuple):
    content: str
    status: int
    body: Any
    worker: str


async def _send(http: aiohttp.ClientSession, url: str, chat_id: str, n: int) -> Sent:
    content = f"message {n} for {chat_id[:8]}"
    async with http.post(f"{url}/chats/messages/", json={"chat_id": chat_id, "content": content}) as response:
        return Sent(content, response.status, await response.json(), response.headers["X-Chatledger-Worker"])


async def _history(http: aiohttp.ClientSession, url: str, chat_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        params = {"limit": "100", "offset": str(len(items))}
        async with http.get(f"{url}/chats/{chat_id}/messages/", params=params) as response:
            page = await response.json()
        items.extend(page["items"])
        if len(items) >= page["total"]:
            return items


@pytest.mark.haproxy
@pytest.mark.slow
class TestBehindHAProxy:
    async def test_1000_concurrent_messages_to_20_chats(
        self, run_local: Any, backend: tuple[RedisClient, dict[str, str]]
    ) -> None:
        """Every answer is 200, 402 (the chat cannot pay) or 429 `tokens_held` (it could, but messages in
        flight hold its tokens); per chat, token_used <= token_limit, the 200s' charges add up to
        token_used, nothing stays reserved, and the history is exactly the successes, each as a user
        message followed by its own reply. All three workers served. The config's share of model calls
        is above the burst, which is about the chats' tokens."""
        redis, setting = backend
        tenants = TenantStore(redis, KEYS)
        config = await tenants.create_config(
            agent_name="Scale",
            company_name="Test",
            max_output_tokens=MAX_OUTPUT_TOKENS,
            model_calls_max=MESSAGES,
        )
        api_key = (await tenants.issue_key(config.config_id)).api_key
        lb_port, *worker_ports = free_ports(1 + WORKERS)
        deployment: LocalDeployment = run_local(
            lb_port,
            worker_ports,
            CHATLEDGER_KEY_PREFIX=PREFIX,
            CHATLEDGER_LOG_LEVEL="warning",
            **setting,
        )
        url = deployment.url
        connector = aiohttp.TCPConnector(limit=CLIENT_CONNECTIONS)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"X-API-Key": api_key}
        ) as http:
            chat_ids = []
            for _ in range(CHATS):
                async with http.post(f"{url}/chats/", json={"token_limit": TOKEN_LIMIT}) as response:
                    assert response.status == 200, await response.text()
                    chat_ids.append((await response.json())["chat_id"])

            results = await asyncio.gather(
                *(_send(http, url, chat_ids[n % CHATS], n) for n in range(MESSAGES))
            )

            statuses = Counter(sent.status for sent in results)
            assert set(statuses) <= {200, 402, 429}, statuses
            assert all(sent.body["code"] == "insufficient_tokens" for sent in results if sent.status == 402)
            refused = Counter(sent.body["code"] for sent in results if sent.status == 429)
            assert set(refused) <= {"tokens_held"}, refused
            served = Counter(sent.worker for sent in results)
            assert set(served) == {f"worker{n}" for n in range(1, WORKERS + 1)}, served
            for chat_id in chat_ids:
                await self._check_chat(http, url, redis, chat_id, results)
        # SIGTERM: HAProxy stops softly, then the workers drain; a clean stop exits 0.
        assert deployment.process.terminate() == 0, deployment.process.log.tail()
        print(f"\n{list(setting)}: statuses {dict(statuses)}, served by {dict(sorted(served.items()))}")

    async def _check_chat(
        self,
        http: aiohttp.ClientSession,
        url: str,
        redis: RedisClient,
        chat_id: str,
        results: list[Sent],
    ) -> None:
        answers = [sent.body for sent in results if sent.status == 200 and sent.body["chat_id"] == chat_id]
        # Message ids are stream ids, unique within a chat only.
        sent_for_reply = {
            sent.body["id"]: sent.content
            for sent in results
            if sent.status == 200 and sent.body["chat_id"] == chat_id
        }
        # The budget binds: some messages of the chat were paid for, not all of them.
        assert 0 < len(answers) < MESSAGES // CHATS
        async with http.get(f"{url}/chats/{chat_id}") as response:
            chat = await response.json()
        assert milli(chat["token_used"]) <= milli(chat["token_limit"]) == milli(TOKEN_LIMIT)
        assert sum(milli(body["tokens_charged"]) for body in answers) == milli(chat["token_used"])
        meta = await redis.hgetall(KEYS.chat_meta(chat_id))
        assert meta["reserved"] == "0"

        history = await _history(http, url, chat_id)
        assert len(history) == 2 * len(answers)
        assert [m["is_user"] for m in history] == [True, False] * len(answers)
        assert sorted(m["id"] for m in history[1::2]) == sorted(body["id"] for body in answers)
        for user, reply in zip(history[::2], history[1::2], strict=True):
            assert user["id"] < reply["id"]
            # Each reply follows the very message its request sent: no pair is split or interleaved.
            assert user["content"] == sent_for_reply[reply["id"]]
