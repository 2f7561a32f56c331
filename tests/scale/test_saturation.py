"""A saturated worker leaves HAProxy's rotation and comes back (deploy/haproxy.cfg, deploy/run-local.sh),
and the shipped config keeps HAProxy's per-worker limit below a worker's own cap.

Two workers behind the real HAProxy, each with a cap of 1 request in flight. One message sent straight
to worker1 (not through HAProxy) is held by a fake model server: worker1 is at its cap, its /readyz
answers 503 `saturated`, and HAProxy marks it DOWN, so everything sent through HAProxy is served by
worker2. Once the model answers, worker1's /readyz is 200 again and HAProxy marks it UP. The test waits
for HAProxy's own log lines, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

import ledger
from service.settings import Settings
from tests.providers.fake_openai import Behavior, FakeOpenAI
from tests.redis_servers import RedisServer, free_ports
from tests.scale.conftest import START_TIMEOUT_S, LocalDeployment

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "clsat"
KEYS = ledger.Keyspace(PREFIX)


@pytest_asyncio.fixture
async def fake(aiohttp_server: Any) -> AsyncIterator[FakeOpenAI]:
    upstream = FakeOpenAI()
    server: TestServer = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/v1"))
    yield upstream
    upstream.release.set()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def _logged(path: Path, pattern: str) -> None:
    """Return once `pattern` appears in the file (bounded: the bound only ends a failing test)."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while not re.search(pattern, _read(path)):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"no {pattern!r} in {path}: {_read(path)[-2000:]}")
        await asyncio.sleep(0.05)


async def _served_by(http: aiohttp.ClientSession, url: str, count: int) -> Counter[tuple[int, str]]:
    answers: Counter[tuple[int, str]] = Counter()
    for _ in range(count):
        async with http.get(url) as response:
            answers[(response.status, response.headers["X-Chatledger-Worker"])] += 1
    return answers


class TestShippedConfig:
    def test_haproxy_maxconn_stays_below_the_default_cap(self) -> None:
        """deploy/haproxy.cfg's maxconn per server is below CHATLEDGER_MAX_IN_FLIGHT's default, so a
        worker fed by one HAProxy never refuses nor reports itself saturated while merely busy."""
        config = (ROOT / "deploy" / "haproxy.cfg").read_text()
        (maxconn,) = re.findall(r"^\s*default-server .*\bmaxconn (\d+)", config, re.M)
        assert re.search(r"^\s*option httpchk GET /readyz$", config, re.M)
        assert 0 < int(maxconn) < Settings().max_in_flight


@pytest.mark.haproxy
@pytest.mark.redis
@pytest.mark.slow
class TestSaturatedWorker:
    async def test_haproxy_sends_nothing_to_a_saturated_worker_until_it_recovers(
        self, run_local: Any, redis_server: RedisServer, fake: FakeOpenAI
    ) -> None:
        """worker1 at its cap (one held message sent to it directly): HAProxy marks it DOWN on its
        503 /readyz and 10 reads through HAProxy are all 200 from worker2; the held message then ends
        200, HAProxy marks worker1 UP, and reads reach both workers again."""
        store = ledger.connect(redis_server.url)
        try:
            await store.flushall()
            tenants = ledger.TenantStore(store, KEYS)
            config = await tenants.create_config(agent_name="A", company_name="B", max_output_tokens=16)
            key = (await tenants.issue_key(config.config_id)).api_key
        finally:
            await store.aclose()
        lb_port, *worker_ports = free_ports(3)
        deployment: LocalDeployment = run_local(
            lb_port, worker_ports, REDIS_URL=redis_server.url, CHATLEDGER_KEY_PREFIX=PREFIX,
            CHATLEDGER_MAX_IN_FLIGHT="1", CHATLEDGER_PROVIDER="openai", CHATLEDGER_OPENAI_MODEL="fake-model",
            CHATLEDGER_OPENAI_BASE_URL=fake.base_url, CHATLEDGER_OPENAI_MAX_RETRIES="0",
        )  # fmt: skip
        haproxy_log = deployment.run_dir / "haproxy.log"
        async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
            async with http.post(f"{deployment.url}/chats/", json={"token_limit": 1000}) as response:
                chat_id = (await response.json())["chat_id"]
            chat_url = f"{deployment.url}/chats/{chat_id}"
            fake.plan(Behavior(hang=True))
            direct = f"http://127.0.0.1:{worker_ports[0]}/chats/messages/"
            held = asyncio.create_task(http.post(direct, json={"chat_id": chat_id, "content": "hold"}))
            await _logged(haproxy_log, r"workers/worker1 is DOWN")
            assert await _served_by(http, chat_url, 10) == {(200, "worker2"): 10}

            fake.release.set()
            async with await held as response:
                assert response.status == 200, await response.text()
            await _logged(haproxy_log, r"workers/worker1 is UP")
            served = await _served_by(http, chat_url, 10)
            assert {status for status, _worker in served} == {200}
            assert {worker for _status, worker in served} == {"worker1", "worker2"}, served
        assert deployment.process.terminate() == 0, deployment.process.log.tail()
