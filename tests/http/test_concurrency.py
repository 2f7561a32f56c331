"""300 concurrent sends on one chat through three app instances, each with its own Redis connection
pool (three workers in all but process), against a real redis-server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.settings import Settings
from tests.http.conftest import Api, new_tenant
from tests.redis_servers import RedisServer

SENDS = 300
WORKERS = 3


def milli(tokens: float) -> int:
    return round(tokens * 1000)


@pytest_asyncio.fixture
async def worker_clients(redis_server: RedisServer, real_redis: Redis) -> AsyncIterator[list[Redis]]:
    clients = [ledger.connect(redis_server.url) for _ in range(WORKERS)]
    yield clients
    for client in clients:
        await client.aclose()


@pytest.mark.redis
class TestConcurrentSends:
    async def test_one_chat_under_300_concurrent_sends(
        self, aiohttp_client: Any, real_redis: Redis, worker_clients: list[Redis]
    ) -> None:
        """Only what the limit pays for succeeds; every other answer is 402 (the chat cannot pay) or 429
        `tokens_held` (it could, but messages in flight hold its tokens); charges add up to token_used
        exactly; the history holds each success as a user/reply pair in order. The config's share of
        model calls is as large as the sends, so that every send reaches the ledger."""
        settings = Settings(
            redis_url="redis://unused", key_prefix="cltest", history_messages=2, model_calls_per_config=SENDS
        )
        tenants = ledger.TenantStore(real_redis, ledger.Keyspace("cltest"))
        _config, key = await new_tenant(tenants)
        workers = [Api(await aiohttp_client(create_app(settings, redis=c)), key) for c in worker_clients]
        chat_id = (await workers[0].create_chat(4000))["chat_id"]

        results = await asyncio.gather(
            *(workers[i % WORKERS].send(chat_id, f"message number {i}") for i in range(SENDS))
        )

        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 402, 429}, statuses
        assert all(body["code"] == "tokens_held" for status, body in results if status == 429)
        successes = [body for status, body in results if status == 200]
        assert 10 < len(successes) < SENDS
        _, chat, _ = await workers[1].call("GET", f"/chats/{chat_id}")
        assert chat["token_used"] <= chat["token_limit"]
        assert sum(milli(b["tokens_charged"]) for b in successes) == milli(chat["token_used"])
        meta = await real_redis.hgetall(ledger.Keyspace("cltest").chat_meta(chat_id))
        assert meta["reserved"] == "0"

        _, page, _ = await workers[2].call("GET", f"/chats/{chat_id}/messages/", params={"limit": "100"})
        history: list[dict[str, Any]] = []
        for offset in range(0, page["total"], 100):
            _, chunk, _ = await workers[2].call(
                "GET", f"/chats/{chat_id}/messages/", params={"limit": "100", "offset": str(offset)}
            )
            history.extend(chunk["items"])
        assert len(history) == page["total"] == 2 * len(successes)
        assert [m["is_user"] for m in history] == [True, False] * len(successes)
        for user, reply in zip(history[::2], history[1::2], strict=True):
            assert user["id"] < reply["id"]
            assert reply["content"].count(" tokens:") == 1
        assert sorted(m["id"] for m in history if not m["is_user"]) == sorted(b["id"] for b in successes)
        assert Counter(milli(m["tokens_charged"]) for m in history[1::2]) == Counter(
            milli(b["tokens_charged"]) for b in successes
        )
        print(f"\n{SENDS} sends: {dict(statuses)}; token_used {chat['token_used']} of {chat['token_limit']}; "
              f"history {len(history)} messages")  # fmt: skip
