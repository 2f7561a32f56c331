"""The ledger on a real Redis Cluster: one slot per script, every node in use, redirections followed.

The suites of tests/integration and tests/http run on the cluster as well (the `redis-cluster` backend of
tests/conftest.py); these tests are about what only a cluster has: several primaries, slots, and the
MOVED and ASK redirections of a slot that changes hands (design.md section 3).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from ledger import ConfigRecord, HistoryQuery, Keyspace, Ledger, TenantStore, connect_cluster
from ledger.scripts import SCRIPT_NAMES
from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.integration.helpers import reserve, settle
from tests.redis_servers import LocalRedisCluster, flush_all

pytestmark = pytest.mark.cluster

KEYS = Keyspace("cltest")


@pytest.fixture
def nodes(redis_cluster: LocalRedisCluster) -> Iterator[list[redis.Redis]]:
    """A plain client of each node, to look at one node at a time."""
    clients = [
        redis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in redis_cluster.ports
    ]
    yield clients
    for client in clients:
        client.close()


def _home(client: RedisCluster, key: str) -> ClusterNode:
    """The primary the client sends `key` to."""
    node = client.get_node_from_key(key)
    assert node is not None
    return node


async def _exchange(ledger: Ledger, config: ConfigRecord, chat_id: str, charge_milli: int) -> None:
    reservation = await reserve(ledger, config, chat_id, prompt_tokens=5, completion_tokens_max=20)
    await settle(ledger, reservation, charge_milli=charge_milli)


class TestTheCluster:
    def test_three_primaries_serve_every_slot(self, nodes: list[redis.Redis]) -> None:
        """The fixture is a real cluster: three nodes that agree, all 16384 slots served."""
        for node in nodes:
            info = node.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert info["cluster_slots_ok"] == "16384"
            assert info["cluster_known_nodes"] == info["cluster_size"] == "3"

    async def test_flush_empties_every_primary(
        self, cluster_client: RedisCluster, nodes: list[redis.Redis]
    ) -> None:
        """The backend's FLUSHALL reaches every primary, so no test sees another's keys on any node."""
        for n in range(60):
            await cluster_client.set(f"cltest:probe:{n}", "x")
        assert all(node.dbsize() > 0 for node in nodes)
        await flush_all(cluster_client)
        assert [node.dbsize() for node in nodes] == [0, 0, 0]

    async def test_scripts_are_loaded_on_every_primary(
        self, cluster_ledger: Ledger, nodes: list[redis.Redis]
    ) -> None:
        """`Ledger.start()` loads every script on every primary, so none meets NOSCRIPT on first use."""
        shas = [getattr(cluster_ledger.scripts, name).sha for name in SCRIPT_NAMES]
        for node in nodes:
            node.script_flush()
        await cluster_ledger.start()
        for node in nodes:
            assert node.script_exists(*shas) == [True] * len(shas)


class TestChatsOnTheCluster:
    async def test_chats_spread_over_every_node_and_each_keeps_one_slot(
        self, cluster_ledger: Ledger, cluster_tenants: TenantStore, cluster_client: RedisCluster
    ) -> None:
        """Thirty chats land on all three primaries; each chat's keys share its slot; the config's
        listing (its index on one slot, the chats on others) reads them all back."""
        config = await cluster_tenants.create_config(agent_name="A", company_name="C")
        chats = [await cluster_ledger.create_chat(config, 100_000) for _ in range(30)]
        for chat in chats:
            await _exchange(cluster_ledger, config, chat.chat_id, 7_000)
        homes = {_home(cluster_client, KEYS.chat_meta(c.chat_id)).name for c in chats}
        assert len(homes) == 3
        for chat in chats:
            stored = [key async for key in cluster_client.scan_iter(match=f"{KEYS.chat_tag(chat.chat_id)}*")]
            assert KEYS.chat_meta(chat.chat_id) in stored
            assert len(stored) >= 3
            assert len({key_slot(key.encode()) for key in stored}) == 1
        page = await cluster_ledger.list_chats(config.config_id, offset=0, limit=100)
        assert page.total == 30
        assert [c.chat_id for c in page.items] == [c.chat_id for c in chats]
        assert all(c.used_milli == 7_000 and c.reserved_milli == 0 for c in page.items)

    async def test_a_script_given_two_chats_keys_is_refused(
        self, cluster_ledger: Ledger, cluster_tenants: TenantStore
    ) -> None:
        """The one-slot rule is enforced here, not only assumed: keys of two chats (two slots) in one
        script call fail before anything runs."""
        config = await cluster_tenants.create_config(agent_name="A", company_name="C")
        first = await cluster_ledger.create_chat(config, 1_000)
        second = first
        while key_slot(KEYS.chat_tag(second.chat_id).encode()) == key_slot(
            KEYS.chat_tag(first.chat_id).encode()
        ):
            second = await cluster_ledger.create_chat(config, 1_000)
        keys = KEYS.chat_keys(first.chat_id)
        keys[1] = KEYS.chat_messages(second.chat_id)
        with pytest.raises(RedisClusterException, match="same key slot"):
            await cluster_ledger.scripts.void(keys=keys, args=["no-such-hold", 1000])

    async def test_scripts_come_back_after_a_node_loses_them(
        self, cluster_ledger: Ledger, cluster_tenants: TenantStore, nodes: list[redis.Redis]
    ) -> None:
        """A primary without the scripts (restarted, or a replica just promoted) gets them again on
        first use: the client answers NOSCRIPT with SCRIPT LOAD and runs the script."""
        config = await cluster_tenants.create_config(agent_name="A", company_name="C")
        for node in nodes:
            node.script_flush()
        chat = await cluster_ledger.create_chat(config, 100_000)
        for node in nodes:
            node.script_flush()
        await _exchange(cluster_ledger, config, chat.chat_id, 3_000)
        state = await cluster_ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (3_000, 0)


class TestRedirections:
    async def test_a_chat_whose_slot_moves_keeps_working(
        self,
        cluster_ledger: Ledger,
        cluster_tenants: TenantStore,
        cluster_client: RedisCluster,
        nodes: list[redis.Redis],
    ) -> None:
        """Moving a chat's slot to another primary under a live client: while the slot migrates the
        client follows ASK, after it moved it follows MOVED; every exchange is charged once and the
        history stays whole."""
        config = await cluster_tenants.create_config(agent_name="A", company_name="C")
        chat = await cluster_ledger.create_chat(config, 1_000_000)
        await _exchange(cluster_ledger, config, chat.chat_id, 1_000)
        slot = key_slot(KEYS.chat_tag(chat.chat_id).encode())
        ids = [node.cluster("MYID") for node in nodes]
        source = next(i for i, node in enumerate(nodes) if node.cluster("COUNTKEYSINSLOT", slot) > 0)
        target = (source + 1) % len(nodes)
        try:
            nodes[target].cluster("SETSLOT", slot, "IMPORTING", ids[source])
            nodes[source].cluster("SETSLOT", slot, "MIGRATING", ids[target])
            keys = nodes[source].cluster("GETKEYSINSLOT", slot, 100)
            port = nodes[target].connection_pool.connection_kwargs["port"]
            nodes[source].migrate("127.0.0.1", port, keys, 0, 5000)
            # The keys are on the target, the slot still on the source: the source answers ASK.
            await _exchange(cluster_ledger, config, chat.chat_id, 2_000)
        finally:
            for node in nodes:
                node.cluster("SETSLOT", slot, "NODE", ids[target])
        # The slot is the target's now; the client's map still says source: it gets MOVED.
        await _exchange(cluster_ledger, config, chat.chat_id, 4_000)

        assert nodes[source].cluster("COUNTKEYSINSLOT", slot) == 0
        assert nodes[target].cluster("COUNTKEYSINSLOT", slot) >= 3
        assert _home(cluster_client, KEYS.chat_meta(chat.chat_id)).port == port
        state = await cluster_ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (7_000, 0)
        history = await cluster_ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        assert history.total == 6
        assert [m.is_user for m in history.items] == [True, False] * 3


class TestCliOnTheCluster:
    def test_configs_and_keys_through_redis_cluster_url(
        self,
        redis_cluster: LocalRedisCluster,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The admin commands work on a cluster given REDIS_CLUSTER_URL alone: a created config and
        its key read back through a cluster client."""
        monkeypatch.delenv("REDIS_URL", raising=False)
        monkeypatch.setenv("REDIS_CLUSTER_URL", redis_cluster.url)
        monkeypatch.setenv("CHATLEDGER_KEY_PREFIX", "clcli")
        assert main(["config", "create", "--agent-name", "Bot", "--company-name", "Acme"]) == 0
        out = capsys.readouterr().out
        config_id = re.search(r"config_id: (\S+)", out)
        api_key = re.search(r"api_key:\s+(\S+)", out)
        assert config_id
        assert api_key

        async def resolve() -> str | None:
            client = connect_cluster(redis_cluster.url)
            try:
                return await TenantStore(client, Keyspace("clcli")).resolve_key(api_key[1])
            finally:
                await client.aclose()

        assert asyncio.run(resolve()) == config_id[1]
        assert main(["key", "list", config_id[1]]) == 0
        assert api_key[1][:8] in capsys.readouterr().out


class TestReadiness:
    async def test_ready_while_one_primary_is_down(self, aiohttp_client: Any) -> None:
        """With one of three primaries stopped, /readyz stays 200: the other primaries' chats still work,
        and an unready verdict on every worker would let the load balancer drain them all."""
        with LocalRedisCluster() as cluster:
            client = connect_cluster(cluster.url)
            try:
                settings = Settings(redis_cluster_url=cluster.url, key_prefix="clready")
                http = await aiohttp_client(create_app(settings, redis=client))
                assert (await http.get("/readyz")).status == 200
                cluster.servers[0].stop()
                for _ in range(3):
                    response = await http.get("/readyz")
                    assert response.status == 200, await response.text()
            finally:
                await client.aclose()
