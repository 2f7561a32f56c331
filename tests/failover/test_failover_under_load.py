"""A primary SIGKILLed under load, in each durability mode: what the clients were told against what the
promoted replica holds (tests/failover/load.py).

Several `chatledger serve` workers take continuous load through Redis Sentinel (1 primary, 2 replicas,
3 sentinels). Then both replication links are cut, as a partition would, the load goes on for a
moment, the primary is killed, the sentinels promote a replica, and the load goes on again. On one
machine a healthy replica keeps up, so without the cut no mode would lose anything and the test could
not tell them apart. `replica` must lose no acknowledged write; `none` may, and its loss is printed
with the number of writes acknowledged while the links were cut. In both, nothing is charged twice and
no hold outlives its deadline.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import pytest

import ledger
from ledger import Keyspace, TenantStore
from tests.failover.load import Answer, Load, Record, audit
from tests.failover.topology import SentinelTopology
from tests.redis_servers import free_port
from tests.scale.conftest import Process, base_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "clload"
KEYS = Keyspace(PREFIX)
# Failovers per mode; each is a fresh topology and deployment.
RUNS = 5
HOLD_TTL_S = 2
# The load's phases, in seconds: before the cut, cut before the kill, after the promotion.
WARM_S, CUT_S, AFTER_S = 1.5, 1.0, 1.5


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("durability", ["none", "replica"])
async def test_a_failover_under_load(durability: str, run: int, tmp_path: Path) -> None:
    with SentinelTopology() as topology:
        setup = ledger.connect_sentinel(topology.url)
        tenants = TenantStore(setup, KEYS)
        config = await tenants.create_config(agent_name="Failover", company_name="Test")
        api_key = (await tenants.issue_key(config.config_id)).api_key
        port = free_port()
        serve = Process(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", "2"],
            base_env(
                REDIS_SENTINEL_URL=topology.url, CHATLEDGER_DURABILITY=durability,
                CHATLEDGER_DURABILITY_TIMEOUT_MS="300", CHATLEDGER_KEY_PREFIX=PREFIX,
                CHATLEDGER_RESERVATION_TTL_S=str(HOLD_TTL_S), CHATLEDGER_LOG_LEVEL="warning",
            ),
            tmp_path / "serve.log",
        )  # fmt: skip
        record = Record()
        load = Load(f"http://127.0.0.1:{port}", api_key, record, clients=24, seed=run)
        try:
            await wait_ready(port, serve)
            await load.start(chats=30)
            topology.wait_replicated()
            await asyncio.sleep(WARM_S)
            cut_s = time.monotonic()
            for proxy in topology.proxies:
                proxy.cut()
            await asyncio.sleep(CUT_S)
            killed_s = time.monotonic()
            old = topology.kill_primary()
            await asyncio.to_thread(topology.wait_promoted, old)
            promoted_s = time.monotonic()
            await asyncio.sleep(AFTER_S)
            await load.stop()

            # Past every hold's deadline, one more message per chat reclaims what a failure left.
            await asyncio.sleep(HOLD_TTL_S + 0.5)
            for chat_id in record.chats:
                answer = await settled_send(load, chat_id)
                assert answer.status == 200, f"no answer after the failover: {answer}: {serve.log.tail()}"
            found = await audit(setup, KEYS, record)
        finally:
            await load.close()
            serve.close()
            await setup.aclose()
    during_cut = record.acknowledged_between(cut_s, killed_s)
    refused, window_s = record.unavailable()
    not_replicated = sum(
        1 for a in record.answers
        if a.status == 503 and isinstance(a.body, dict) and a.body.get("code") == "not_replicated"
    )  # fmt: skip
    summary = {
        "durability": durability, "run": run, "acknowledged": found.acknowledged,
        "acknowledged_during_cut": during_cut, "lost": {
            "chats": found.chats_lost, "messages": found.messages_lost, "top_ups": found.top_ups_lost,
        },
        "duplicated_messages": found.duplicated_messages, "charge_mismatches": found.charge_mismatches,
        "stuck_holds": found.stuck_holds, "answered_503": refused, "503_window_s": round(window_s, 2),
        "kill_to_promotion_s": round(promoted_s - killed_s, 2),
        "not_replicated": not_replicated,
        "unknown_outcome": sum(1 for a in record.answers if a.status is None),
        "statuses": statuses(record),
    }  # fmt: skip
    print("FAILOVER " + json.dumps(summary))
    assert (found.duplicated_messages, found.charge_mismatches, found.stuck_holds) == (0, 0, 0), summary
    failed = [a for a in record.answers if a.status is not None and a.status >= 500 and a.status != 503]
    assert not failed, failed[:3]
    if durability == "replica":
        assert found.acknowledged_lost == 0, summary
        # The cut was real: writes were refused while no replica could acknowledge them.
        assert not_replicated > 0, summary
    else:
        # Writes were acknowledged with no replica behind them: the window the test is about was open.
        assert during_cut > 0, summary


async def wait_ready(port: int, serve: Process) -> None:
    """Return once both workers could answer /readyz (the log is at `warning`, so no ready event)."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        answered = 0
        while answered < 8:
            if serve.popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not start: {serve.log.tail()}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    answered = answered + 1 if response.status == 200 else 0
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)


async def settled_send(load: Load, chat_id: str) -> Answer:
    """A message's answer once the deployment answers anything but 503 (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        answer = await load.send(chat_id)
        if answer.status != 503 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)


def statuses(record: Record) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in record.answers:
        name = str(answer.status)
        if isinstance(answer.body, dict) and "code" in answer.body:
            name += f" {answer.body['code']}"
        counts[name] = counts.get(name, 0) + 1
    return counts
