"""CHATLEDGER_DURABILITY=replica on a Redis Cluster: the WAIT goes to the node that took the write, and
counts that node's replicas. On the session's cluster, whose primaries have none, every write is
refused and every read answers."""

from __future__ import annotations

import pytest

import ledger
from ledger import Durability, Keyspace, Ledger, TenantStore
from tests.redis_servers import LocalRedisCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KEYS = Keyspace("cldurable")


async def test_writes_on_primaries_without_replicas_are_refused(redis_cluster: LocalRedisCluster) -> None:
    plain = ledger.connect_cluster(redis_cluster.url)
    durable = ledger.connect_cluster(redis_cluster.url, durability=Durability(1, 50))
    try:
        config = await TenantStore(plain, KEYS).create_config(agent_name="A", company_name="B")
        chat = await Ledger(plain, KEYS).create_chat(config, 10_000)
        the_ledger = Ledger(durable, KEYS)
        await the_ledger.start()
        with pytest.raises(ledger.NotReplicated):
            await the_ledger.create_chat(config, 10_000)
        with pytest.raises(ledger.NotReplicated):
            await the_ledger.top_up(config.config_id, chat.chat_id, 1_000)
        with pytest.raises(ledger.NotReplicated):
            await TenantStore(durable, KEYS).create_config(agent_name="C", company_name="D")
        with pytest.raises(ledger.NotReplicated):
            await the_ledger.confirm_durable(chat.chat_id)
        # The refused top-up ran on the primary: refusing it says no replica has it, not that it failed.
        state = await the_ledger.get_chat(config.config_id, chat.chat_id)
        assert state.limit_milli == 11_000
    finally:
        await plain.aclose()
        await durable.aclose()
