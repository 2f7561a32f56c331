"""Overload on a real `chatledger serve` worker and a real redis-server: past its in-flight cap
(CHATLEDGER_MAX_IN_FLIGHT) a worker refuses at once with 503 `overloaded`, reserves nothing, reports
itself saturated on /readyz until the load drops, and still answers /healthz and /metrics.

The cap is held by message requests that the test-only CHATLEDGER_MESSAGE_DELAY_MS keeps waiting before
they are handled; the test knows they are in flight from the worker's log (`message_delayed`), never from
a sleep.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

import ledger
from tests.redis_servers import RedisServer, free_ports
from tests.scale.conftest import Process, base_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "clshed"
KEYS = ledger.Keyspace(PREFIX)
CAP = 2
# Long beside the few requests the test makes while the cap is held; the test checks that the slow
# requests were still in flight after them, so a machine too slow for it fails rather than passes.
DELAY_MS = 6000


@pytest_asyncio.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[ledger.RedisClient]:
    client = ledger.connect(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def worker(tmp_path: Path, redis_server: RedisServer) -> Any:
    """One `chatledger serve` worker with the cap and the delay, listening; stopped after the test."""
    port = free_ports(1)[0]
    env = base_env(
        REDIS_URL=redis_server.url, CHATLEDGER_KEY_PREFIX=PREFIX, CHATLEDGER_MAX_IN_FLIGHT=str(CAP),
        CHATLEDGER_MESSAGE_DELAY_MS=str(DELAY_MS), CHATLEDGER_AUTH_CACHE_TTL_S="0",
    )  # fmt: skip
    command = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(command, env, tmp_path / "serve.log")
    process.log.wait_for("worker_listening", process=process.popen)
    yield process, f"http://127.0.0.1:{port}"
    process.close()


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, key: str) -> None:
        self.http, self.base, self.key = http, base, key

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, dict[str, str]]:
        headers = {"X-API-Key": self.key}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as response:
            return response.status, await response.read(), dict(response.headers)

    async def send(self, chat_id: str, content: str) -> tuple[int, bytes, dict[str, str]]:
        return await self.call("POST", "/chats/messages/", {"chat_id": chat_id, "content": content})

    async def create_chat(self) -> str:
        status, body, _headers = await self.call("POST", "/chats/", {"token_limit": 1000})
        assert status == 200, body
        chat_id: str = json.loads(body)["chat_id"]
        return chat_id


async def figures(store: ledger.RedisClient, chat_id: str) -> tuple[int, int, list[str]]:
    """The chat's used and reserved milli-tokens, and its journal's operations, read from Redis."""
    book = ledger.Ledger(store, KEYS)
    chat = await book.get_chat(None, chat_id)
    return chat.used_milli, chat.reserved_milli, [entry.op for entry in await book.read_journal(chat_id)]


async def until_ready(client: Client, bound: int = 400) -> dict[str, Any]:
    """Poll /readyz until it answers 200 (bounded: the bound only ends a failing test)."""
    for _ in range(bound):
        status, body, _headers = await client.call("GET", "/readyz")
        if status == 200:
            ready: dict[str, Any] = json.loads(body)
            return ready
        await asyncio.sleep(0.05)
    pytest.fail("/readyz never answered 200 again")


class TestOverloadedWorker:
    async def test_the_cap_sheds_readyz_flips_and_recovers(
        self, worker: Any, store: ledger.RedisClient
    ) -> None:
        """With 2 slow messages holding the cap of 2: the next message (to another chat, and to the same
        one) is 503 overloaded with Retry-After, nothing is reserved or journaled on any chat, /readyz is
        503 saturated, /healthz and /metrics answer 200 and /metrics counts the 2 refusals. When the slow
        messages end (200 each, charged once each), /readyz answers 200 again and messages are served."""
        process, base = worker
        tenants = ledger.TenantStore(store, KEYS)
        config = await tenants.create_config(agent_name="Agent", company_name="Co", max_output_tokens=64)
        key = (await tenants.issue_key(config.config_id)).api_key
        async with aiohttp.ClientSession() as http:
            client = Client(http, base, key)
            slow_chat, other_chat = await client.create_chat(), await client.create_chat()
            slow = [asyncio.create_task(client.send(slow_chat, f"slow {n}")) for n in range(CAP)]
            await asyncio.to_thread(process.log.wait_for, "message_delayed", CAP, process=process.popen)

            refused = [
                await client.send(other_chat, "one too many"),
                await client.send(slow_chat, "and this"),
            ]
            for status, body, headers in refused:
                assert (status, json.loads(body)["code"]) == (503, "overloaded"), body
                assert headers["Retry-After"] == "1"
            # The slow ones wait before their handler: no chat has anything reserved or journaled yet.
            assert await figures(store, other_chat) == (0, 0, ["create"])
            assert await figures(store, slow_chat) == (0, 0, ["create"])

            status, body, _headers = await client.call("GET", "/readyz")
            assert status == 503
            assert json.loads(body)["status"] == "saturated"
            assert (json.loads(body)["in_flight"], json.loads(body)["max_in_flight"]) == (CAP, CAP)
            assert (await client.call("GET", "/healthz"))[0] == 200
            status, metrics, _headers = await client.call("GET", "/metrics")
            assert status == 200
            assert b'chatledger_http_requests_shed_total{route="/chats/messages/"} 2.0' in metrics
            assert not any(task.done() for task in slow), "the delay ended before the checks: raise DELAY_MS"

            answers = await asyncio.gather(*slow)
            assert [status for status, _body, _headers in answers] == [200] * CAP
            ready = await until_ready(client)
            assert (ready["in_flight"], ready["max_in_flight"]) == (0, CAP)
            assert (await client.send(other_chat, "now it fits"))[0] == 200

        charges = sum(json.loads(body)["tokens_charged"] for _status, body, _headers in answers)
        used, reserved, ops = await figures(store, slow_chat)
        assert (reserved, ops) == (0, ["create"] + ["reserve", "settle"] * CAP)
        assert used == round(charges * 1000)
        assert (await ledger.Ledger(store, KEYS).reconcile(slow_chat)).ok
        print(f"\nrefused {[s for s, _b, _h in refused]}, slow {[s for s, _b, _h in answers]}, used {used}")
