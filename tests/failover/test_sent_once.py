"""A write whose reply is lost is not sent again on a Redis Cluster: redis-py's cluster client resends a
command after a connection error, which runs a top-up twice (and, in a failover, any script whose first
run happened); chatledger's client (OnceCluster) answers it as unavailable instead, and the retry with
an Idempotency-Key is what runs it at most once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.asyncio import RedisCluster

import ledger
from ledger import Keyspace, Ledger, TenantStore
from tests.failover.topology import ReplicatedCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KEYS = Keyspace("clonce")


@pytest.fixture(scope="module")
def cluster() -> Iterator[ReplicatedCluster]:
    with ReplicatedCluster() as cluster:
        yield cluster


async def _top_up_losing_its_reply(cluster: ReplicatedCluster, client: RedisCluster) -> tuple[bool, int]:
    """A top-up of 1,000 whose reply is lost: whether the call failed, and what the chat's limit became."""
    the_ledger = Ledger(client, KEYS)
    await the_ledger.start()
    config = await TenantStore(client, KEYS).create_config(agent_name="A", company_name="B")
    chat = await the_ledger.create_chat(config, 10_000)
    node = client.get_node_from_key(KEYS.chat_meta(chat.chat_id))
    assert node is not None
    cluster.proxy_of(cluster.primary_of(int(node.port))).lose_reply_to(b"EVALSHA")
    try:
        await the_ledger.top_up(config.config_id, chat.chat_id, 1_000)
        failed = False
    except ledger.LedgerUnavailable:
        failed = True
    return failed, (await the_ledger.get_chat(config.config_id, chat.chat_id)).limit_milli


async def test_a_write_whose_reply_is_lost_runs_once(cluster: ReplicatedCluster) -> None:
    client = ledger.connect_cluster(cluster.url)
    try:
        failed, limit = await _top_up_losing_its_reply(cluster, client)
    finally:
        await client.aclose()
    assert (failed, limit) == (True, 11_000)


async def test_redis_pys_own_cluster_client_would_run_it_twice(cluster: ReplicatedCluster) -> None:
    """The same with redis-py's RedisCluster: the lost reply is followed by a second send. This is what
    the test above tells apart; if redis-py stops resending, this one fails and OnceCluster can go."""
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        failed, limit = await _top_up_losing_its_reply(cluster, client)
    finally:
        await client.aclose()
    assert (failed, limit) == (False, 12_000)
