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
import time
from pathlib import Path

import pytest

import ledger
from ledger import Keyspace
from tests.failover.deployment import (
    AFTER_S,
    CUT_S,
    WARM_S,
    reclaim_every_hold,
    server_errors,
    serving,
    statuses,
)
from tests.failover.load import audit
from tests.failover.topology import SentinelTopology

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "clload"
KEYS = Keyspace(PREFIX)
# Failovers per mode; each is a fresh topology and deployment.
RUNS = 5


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("durability", ["none", "replica"])
async def test_a_failover_under_load(durability: str, run: int, tmp_path: Path) -> None:
    with SentinelTopology() as topology:
        setup = ledger.connect_sentinel(topology.url)
        try:
            setting = {"REDIS_SENTINEL_URL": topology.url}
            async with serving(setup, KEYS, setting, durability, run, tmp_path / "serve.log") as (
                serve, record, load,
            ):  # fmt: skip
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
                await reclaim_every_hold(serve, record, load)
            found = await audit(setup, KEYS, record)
        finally:
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
    failed = server_errors(record)
    assert not failed, failed[:3]
    if durability == "replica":
        assert found.acknowledged_lost == 0, summary
        # The cut was real: writes were refused while no replica could acknowledge them.
        assert not_replicated > 0, summary
    else:
        # Writes were acknowledged with no replica behind them: the window the test is about was open.
        assert during_cut > 0, summary
