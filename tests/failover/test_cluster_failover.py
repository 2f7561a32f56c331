"""A Redis Cluster primary SIGKILLed under load, in each durability mode: 3 primaries with a replica
each, `chatledger serve` workers under continuous load; the replication link of the primary that holds
most of the chats is cut, as a partition would, then that primary is killed and the cluster promotes
its replica; then every 2xx the clients got is checked against the cluster (tests/failover/load.py).

Every node announces the port of a proxy in front of it (tests/failover/topology.py), which carries its
clients and its replica alike and cuts only the replication stream. `replica` must lose nothing
acknowledged; `none` may, and its loss is printed with the writes acknowledged during the cut. In both
modes nothing is charged twice and no hold outlives its deadline. The promoted replica has no replica of
its own, so with `replica` its chats answer 503 `not_replicated` until the killed node comes back
(empty) and replicates it; the test brings it back, as an operator would.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
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
from tests.failover.topology import ReplicatedCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PREFIX = "clcfail"
KEYS = Keyspace(PREFIX)
# Failovers per mode: 2 in the suite, to keep it short; CHATLEDGER_TEST_FAILOVER_RUNS=5 for the figures
# of docs/performance.md.
RUNS = int(os.environ.get("CHATLEDGER_TEST_FAILOVER_RUNS", "2"))


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("durability", ["none", "replica"])
async def test_a_cluster_failover_under_load(durability: str, run: int, tmp_path: Path) -> None:
    with ReplicatedCluster() as cluster:
        setup = ledger.connect_cluster(cluster.url)
        try:
            setting = {"REDIS_CLUSTER_URL": cluster.url}
            async with serving(setup, KEYS, setting, durability, run, tmp_path / "serve.log") as (
                serve, record, load,
            ):  # fmt: skip
                homes = collections.Counter(_home(setup, chat_id) for chat_id in record.chats)
                busiest = cluster.primary_of(homes.most_common(1)[0][0])
                await asyncio.sleep(WARM_S)
                cut_s = time.monotonic()
                cluster.cut(busiest)
                await asyncio.sleep(CUT_S)
                killed_s = time.monotonic()
                cluster.kill(busiest)
                await asyncio.to_thread(cluster.wait_promoted, busiest.port)
                promoted_s = time.monotonic()
                await asyncio.sleep(AFTER_S)
                # The promoted replica has no replica of its own: with `replica` its writes are refused
                # until the old primary comes back, empty, and replicates it.
                await asyncio.to_thread(cluster.rejoin, busiest)
                await load.stop()
                await reclaim_every_hold(serve, record, load)
            checker = ledger.connect_cluster(cluster.url)
            try:
                found = await audit(checker, KEYS, record)
            finally:
                await checker.aclose()
        finally:
            await setup.aclose()
    refused, window_s = record.unavailable()
    summary = {
        "durability": durability, "run": run, "chats_on_killed_primary": homes.most_common(1)[0][1],
        "acknowledged": found.acknowledged,
        "acknowledged_during_cut": record.acknowledged_between(cut_s, killed_s),
        "lost": {"chats": found.chats_lost, "messages": found.messages_lost, "top_ups": found.top_ups_lost},
        "duplicated_messages": found.duplicated_messages, "charge_mismatches": found.charge_mismatches,
        "stuck_holds": found.stuck_holds, "answered_503": refused, "503_window_s": round(window_s, 2),
        "kill_to_promotion_s": round(promoted_s - killed_s, 2), "statuses": statuses(record),
    }  # fmt: skip
    print("CLUSTER_FAILOVER " + json.dumps(summary))
    assert (found.duplicated_messages, found.charge_mismatches, found.stuck_holds) == (0, 0, 0), summary
    failed = server_errors(record)
    logged = (tmp_path / "serve.log").read_text(errors="replace").splitlines()
    assert not failed, (failed[:3], [line for line in logged if "error" in line.lower()][-20:])
    if durability == "replica":
        assert found.acknowledged_lost == 0, summary
    else:
        assert summary["acknowledged_during_cut"], summary


def _home(client: ledger.RedisClient, chat_id: str) -> int:
    assert isinstance(client, ledger.connection.OnceCluster)
    node = client.get_node_from_key(KEYS.chat_meta(chat_id))
    assert node is not None
    return int(node.port)
