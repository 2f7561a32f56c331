"""Never overspend, never double-charge, under faults: real `chatledger serve` worker
processes, a real redis-server, and a fake OpenAI-compatible upstream in this test process that counts
every model call and can hold one open.

(SIGTERM with requests in flight is tests/scale/test_workers.py: they finish settled, or, past the
shutdown timeout, nothing of theirs is charged or saved.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

import ledger
from tests.providers.fake_openai import Behavior, FakeOpenAI
from tests.redis_servers import RedisServer, free_ports
from tests.scale.conftest import Process, base_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "clfaults"
KEYS = ledger.Keyspace(PREFIX)
# Short holds, so a dead worker's hold expires within the test; the model's budget stays below it
# (serve refuses a total timeout at or above the hold's deadline).
HOLD_TTL_S = 3
MODEL_TOTAL_TIMEOUT_S = 2.5


@pytest_asyncio.fixture
async def fake(aiohttp_server: Any) -> AsyncIterator[FakeOpenAI]:
    upstream = FakeOpenAI()
    server: TestServer = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/v1"))
    yield upstream
    upstream.release.set()


@pytest_asyncio.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[ledger.RedisClient]:
    client = ledger.connect(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


async def tenant(client: ledger.RedisClient) -> str:
    tenants = ledger.TenantStore(client, KEYS)
    config = await tenants.create_config(agent_name="Agent", company_name="Co", max_output_tokens=64)
    return (await tenants.issue_key(config.config_id)).api_key


def serve(tmp_path: Path, redis_url: str, fake: FakeOpenAI, name: str = "serve") -> tuple[Process, int]:
    """`chatledger serve --workers 2` on the openai provider pointed at the fake; waits until it listens."""
    port = free_ports(1)[0]
    env = base_env(
        REDIS_URL=redis_url, CHATLEDGER_KEY_PREFIX=PREFIX, CHATLEDGER_PROVIDER="openai",
        CHATLEDGER_OPENAI_BASE_URL=fake.base_url, CHATLEDGER_OPENAI_MODEL="fake-model",
        CHATLEDGER_OPENAI_MAX_RETRIES="0", CHATLEDGER_OPENAI_TOTAL_TIMEOUT_S=str(MODEL_TOTAL_TIMEOUT_S),
        CHATLEDGER_RESERVATION_TTL_S=str(HOLD_TTL_S), CHATLEDGER_AUTH_CACHE_TTL_S="0",
    )  # fmt: skip
    command = [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", "2"]
    process = Process(command, env, tmp_path / f"{name}.log")
    process.log.wait_for("workers_ready", process=process.popen)
    return process, port


class Client:
    def __init__(self, http: aiohttp.ClientSession, port: int, key: str) -> None:
        self.http, self.base, self.key = http, f"http://127.0.0.1:{port}", key

    async def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, bytes]:
        async with self.http.request(
            method, self.base + path, json=body, headers={"X-API-Key": self.key, **headers}
        ) as response:
            return response.status, await response.read()

    async def create_chat(self, limit: float) -> str:
        status, body = await self.call("POST", "/chats/", {"token_limit": limit})
        assert status == 200, body
        chat_id: str = json.loads(body)["chat_id"]
        return chat_id

    async def send(self, chat_id: str, content: str, **headers: str) -> tuple[int, bytes]:
        return await self.call(
            "POST", "/chats/messages/", {"chat_id": chat_id, "content": content}, **headers
        )


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    """Wait (bounded) for a condition another process brings about; never a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def balance(client: ledger.RedisClient, chat_id: str) -> tuple[int, int]:
    chat = await ledger.Ledger(client, KEYS).get_chat(None, chat_id)
    return chat.used_milli, chat.reserved_milli


class TestIdempotentUnderConcurrency:
    async def test_50_identical_posts_make_one_model_call_and_one_charge(
        self, tmp_path: Path, redis_server: RedisServer, store: ledger.RedisClient, fake: FakeOpenAI
    ) -> None:
        """50 concurrent POSTs with one Idempotency-Key over two workers, the model held open: one model
        call, one charge; every other answer is 409 while it runs; afterwards a retry gets the first
        answer byte for byte."""
        key = await tenant(store)
        server, port = serve(tmp_path, redis_server.url, fake)
        try:
            async with aiohttp.ClientSession() as http:
                client = Client(http, port, key)
                chat_id = await client.create_chat(1000)
                fake.plan(Behavior(hang=True))
                sends = [asyncio.create_task(client.send(chat_id, "once", **{"Idempotency-Key": "pay-7"}))
                         for _ in range(50)]  # fmt: skip

                async def others_answered() -> bool:
                    return sum(task.done() for task in sends) == 49

                await until(others_answered)
                fake.release.set()
                results = await asyncio.gather(*sends)
                statuses = Counter(status for status, _ in results)
                assert statuses == {200: 1, 409: 49}, statuses
                assert len(fake.requests) == 1
                first = next(body for status, body in results if status == 200)
                replay = await client.send(chat_id, "once", **{"Idempotency-Key": "pay-7"})
                assert replay == (200, first)
                assert len(fake.requests) == 1
                used, reserved = await balance(store, chat_id)
                assert reserved == 0
                journal = await ledger.Ledger(store, KEYS).read_journal(chat_id)
                assert [e.op for e in journal] == ["create", "reserve", "settle"]
                assert used == journal[-1].used_delta_milli > 0
                print(f"\n50 identical POSTs: {dict(statuses)}, model calls {len(fake.requests)}, "
                      f"charged {used / 1000} tokens once, journal {[e.op for e in journal]}")  # fmt: skip
        finally:
            server.close()


class TestCrashedWorker:
    async def test_sigkill_mid_request_leaves_a_hold_the_next_reserve_reclaims(
        self, tmp_path: Path, redis_server: RedisServer, store: ledger.RedisClient, fake: FakeOpenAI
    ) -> None:
        """Both workers SIGKILLed while the model holds a request open: the hold stays until its deadline,
        then the next message reclaims it and succeeds (no phantom 402), reserved is back to 0, and the
        journal shows the expiry and reconciles."""
        key = await tenant(store)
        server, port = serve(tmp_path, redis_server.url, fake)
        try:
            async with aiohttp.ClientSession() as http:
                client = Client(http, port, key)
                # Room for one exchange's hold at a time: a leaked hold would make the next send a 402.
                chat_id = await client.create_chat(80)
                fake.plan(Behavior(hang=True))
                doomed = asyncio.create_task(client.send(chat_id, "about to crash"))

                async def held() -> bool:
                    return (await balance(store, chat_id))[1] > 0 and len(fake.requests) == 1

                await until(held)
                for worker in server.log.events("worker_started"):
                    os.kill(worker["pid"], signal.SIGKILL)
                with pytest.raises(aiohttp.ClientError):
                    await doomed
                await asyncio.to_thread(server.log.wait_for, "worker_listening", 4, process=server.popen)
                assert (await balance(store, chat_id))[1] > 0, "the dead worker's hold outlives it"

                await asyncio.sleep(HOLD_TTL_S + 0.3)  # past the hold's deadline (the Redis clock)
                fake.release.set()
                status, body = await client.send(chat_id, "after the crash")
                assert status == 200, body
                used, reserved = await balance(store, chat_id)
                assert reserved == 0
                book = ledger.Ledger(store, KEYS)
                ops = [e.op for e in await book.read_journal(chat_id)]
                assert ops == ["create", "reserve", "expire", "reserve", "settle"]
                reconciled = await book.reconcile(chat_id)
                assert reconciled.ok
                assert reconciled.expired == 1
                assert used == reconciled.used_sum_milli > 0
                print(
                    f"\nSIGKILL mid-request: journal {ops}, reserved {reserved}, reconciled {reconciled.ok}"
                )
        finally:
            server.close()


class TestRedisOutage:
    async def test_redis_stopped_mid_load_fails_closed_then_reconciles(
        self, tmp_path: Path, fake: FakeOpenAI
    ) -> None:
        """Redis (with an append-only file) stopped under load: every answer is a success, a 402 or a
        503 with Retry-After; no model call is made while it is down; after a restart the service
        answers again, and after the holds of the outage expire every chat reconciles to its journal."""
        with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as redis_server:
            store = ledger.connect(redis_server.url)
            try:
                key = await tenant(store)
                server, port = serve(tmp_path, redis_server.url, fake)
                try:
                    await self._run(redis_server, port, key, fake)
                finally:
                    server.close()
            finally:
                await store.aclose()

    async def _run(self, redis_server: RedisServer, port: int, key: str, fake: FakeOpenAI) -> None:
        async with aiohttp.ClientSession() as http:
            client = Client(http, port, key)
            chats = [await client.create_chat(300) for _ in range(4)]
            statuses: Counter[int] = Counter()

            async def load(rounds: int) -> None:
                for n in range(rounds):
                    results = await asyncio.gather(*(client.send(chat, f"m{n}") for chat in chats))
                    statuses.update(status for status, _ in results)

            await load(3)
            await asyncio.to_thread(redis_server.stop)
            await load(1)
            calls_while_down = len(fake.requests)
            async with http.post(client.base + "/chats/messages/", json={"chat_id": chats[0], "content": "x"},
                                 headers={"X-API-Key": key}) as response:  # fmt: skip
                assert (response.status, response.headers.get("Retry-After")) == (503, "1")
            await load(3)
            assert len(fake.requests) == calls_while_down, "a model call was made while Redis was down"
            async with http.get(client.base + "/readyz") as response:
                assert response.status == 503

            await asyncio.to_thread(redis_server.start)
            await asyncio.sleep(HOLD_TTL_S + 0.3)  # let holds stranded by the outage pass their deadline
            await load(2)
            assert set(statuses) <= {200, 402, 503}, statuses
            assert statuses[503] >= 3 * len(chats)
            assert statuses[200] > 0
            # A fresh client: this test's pooled connection died with the restart.
            fresh = ledger.connect(redis_server.url)
            entries = 0
            try:
                book = ledger.Ledger(fresh, KEYS)
                for chat_id in chats:
                    result = await book.reconcile(chat_id)
                    assert result.ok, result
                    assert result.chat.reserved_milli == 0
                    assert result.chat.used_milli <= result.chat.limit_milli
                    entries += result.entries
                print(f"\nRedis outage: answers {dict(statuses)}, model calls {len(fake.requests)} "
                      f"({calls_while_down} before the outage, none during it), {len(chats)} chats "
                      f"reconciled over {entries} journal entries")  # fmt: skip
            finally:
                await fresh.aclose()
