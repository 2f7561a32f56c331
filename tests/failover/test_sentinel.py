"""Redis Sentinel and CHATLEDGER_DURABILITY=replica against real processes (tests/failover/topology.py):
the client finds the primary through the sentinels and follows a failover, and with a durability a
write no replica acknowledged is refused, then answered once by a retry with the same key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

import ledger
from ledger import ConfigRecord, Durability, IdempotencyKey, Keyspace, Ledger, TenantStore
from service.app import create_app
from service.providers import Completion, CompletionRequest
from service.providers.offline import OfflineModel
from service.settings import Settings
from tests.failover.topology import SentinelTopology

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEYS = Keyspace("clsentinel")
T = TypeVar("T")
# Bounds that only end a hung test: a failover takes a few seconds here.
RECOVERY_S = 30.0


class Store:
    """A Sentinel client with its ledger and tenant store, and a config to use them with."""

    def __init__(self, client: Redis, ledger_: Ledger, tenants: TenantStore, config: ConfigRecord) -> None:
        self.client = client
        self.ledger = ledger_
        self.tenants = tenants
        self.config = config

    @classmethod
    async def open(cls, url: str, durability: Durability | None = None) -> Store:
        client = ledger.connect_sentinel(url, durability=durability)
        the_ledger = Ledger(client, KEYS)
        await the_ledger.start()
        tenants = TenantStore(client, KEYS)
        config = await tenants.create_config(agent_name="Failover", company_name="Test")
        return cls(client, the_ledger, tenants, config)

    async def exchange(self, chat_id: str, charge_milli: int) -> ledger.Settlement:
        reservation = await self.ledger.reserve(
            self.config, chat_id, prompt_tokens=5, completion_tokens_max=20, history_tokens_max=100,
            history_count_max=10,
        )  # fmt: skip
        return await self.ledger.settle(
            reservation, charge_milli=charge_milli, user_content="hi", user_tokens=1,
            reply_content="hello", reply_tokens=1,
        )  # fmt: skip

    async def top_up(self, chat_id: str, key: str | None = None) -> ledger.ChatState:
        idempotency = IdempotencyKey.of(key, "top_up", chat_id, "1000") if key else None
        return await self.ledger.top_up(self.config.config_id, chat_id, 1000, idempotency=idempotency)


async def until_available(call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """`call`'s result once the store answers, and how many times it answered unavailable first."""
    deadline = time.monotonic() + RECOVERY_S
    failures = 0
    while True:
        try:
            return await call(), failures
        except ledger.LedgerUnavailable:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _role(port: int) -> str:
    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as node:
        role: str = node.execute_command("ROLE")[0]
    return role


class TestSentinelClient:
    async def test_the_client_follows_a_failover(self, topology: SentinelTopology) -> None:
        """Scripts (the multiplexer) and commands (the pool) reach the primary the sentinels name; after
        it is killed and a replica promoted, they reach the new one, with what was replicated before."""
        store = await Store.open(topology.url)
        try:
            chat = await store.ledger.create_chat(store.config, 100_000)
            await store.exchange(chat.chat_id, 3_000)
            topology.wait_replicated()
            old = topology.kill_primary()
            _host, new_port = topology.wait_promoted(old)

            state, _failures = await until_available(lambda: store.top_up(chat.chat_id))
            await store.exchange(chat.chat_id, 2_000)

            state = await store.ledger.get_chat(store.config.config_id, chat.chat_id)
            assert (state.limit_milli, state.used_milli, state.reserved_milli) == (101_000, 5_000, 0)
            with redis.Redis(port=new_port, decode_responses=True) as node:
                assert node.hget(KEYS.chat_meta(chat.chat_id), "used") == "5000"
        finally:
            await store.client.aclose()

    async def test_a_demoted_primary_is_left_for_the_new_one(self, topology: SentinelTopology) -> None:
        """A failover that keeps the old primary alive (SENTINEL FAILOVER): it answers READONLY, and the
        client connects again to the primary the sentinels name now."""
        store = await Store.open(topology.url)
        try:
            chat = await store.ledger.create_chat(store.config, 100_000)
            await store.top_up(chat.chat_id)
            old = topology.primary.port
            topology.wait_replicated()
            topology.fail_over()
            _host, new_port = topology.wait_promoted(old)
            topology.wait_role(old, "slave")
            # The client's connections are still to the old primary: the first write meets READONLY.
            await until_available(lambda: store.top_up(chat.chat_id))
            await until_available(lambda: store.exchange(chat.chat_id, 1_000))

            state = await store.ledger.get_chat(store.config.config_id, chat.chat_id)
            assert (state.limit_milli, state.used_milli) == (102_000, 1_000)
            assert (_role(old), _role(new_port)) == ("slave", "master")
        finally:
            await store.client.aclose()


class TestDurability:
    async def test_a_write_no_replica_acknowledged_is_refused_then_answered_once(
        self, topology: SentinelTopology
    ) -> None:
        """Replicas cut off: a top-up is refused (NotReplicated) though the primary applied it; once they
        catch up, the retry with the same Idempotency-Key answers the first result and adds nothing."""
        store = await Store.open(topology.url, Durability(1, 200))
        try:
            chat = await store.ledger.create_chat(store.config, 100_000)
            for proxy in topology.proxies:
                proxy.cut()
            with pytest.raises(ledger.NotReplicated):
                await store.top_up(chat.chat_id, "key-1")
            for proxy in topology.proxies:
                proxy.heal()
            state = await store.top_up(chat.chat_id, "key-1")
            assert state.limit_milli == 101_000
            assert (await store.ledger.get_chat(store.config.config_id, chat.chat_id)).limit_milli == 101_000
        finally:
            await store.client.aclose()

    async def test_a_refused_write_lost_with_its_primary_runs_once_on_retry(
        self, topology: SentinelTopology
    ) -> None:
        """The refused top-up dies with the primary; the retry with the same key, on the promoted
        replica, applies it once. What was acknowledged before the cut is all there."""
        store = await Store.open(topology.url, Durability(1, 200))
        try:
            chat = await store.ledger.create_chat(store.config, 100_000)
            await store.exchange(chat.chat_id, 4_000)
            for proxy in topology.proxies:
                proxy.cut()
            with pytest.raises(ledger.NotReplicated):
                await store.top_up(chat.chat_id, "key-2")
            old = topology.kill_primary()
            topology.wait_promoted(old)
            state, _failures = await until_available(lambda: store.top_up(chat.chat_id, "key-2"))
            assert (state.limit_milli, state.used_milli) == (101_000, 4_000)
            again = await store.top_up(chat.chat_id, "key-2")
            assert again.limit_milli == 101_000
        finally:
            await store.client.aclose()

    async def test_every_kind_of_write_waits_for_a_replica(self, topology: SentinelTopology) -> None:
        """Scripts (a new chat's pipeline, a settle, a delete), configs and keys (plain commands): each
        is refused while no replica can acknowledge it; reads still answer."""
        store = await Store.open(topology.url, Durability(1, 100))
        try:
            chat = await store.ledger.create_chat(store.config, 100_000)
            reservation = await store.ledger.reserve(
                store.config, chat.chat_id, prompt_tokens=5, completion_tokens_max=20,
                history_tokens_max=100, history_count_max=10,
            )  # fmt: skip
            for proxy in topology.proxies:
                proxy.cut()
            config_id = store.config.config_id
            writes: list[Callable[[], Awaitable[Any]]] = [
                lambda: store.ledger.create_chat(store.config, 1_000),
                lambda: store.ledger.settle(
                    reservation,
                    charge_milli=1_000,
                    user_content="a",
                    user_tokens=1,
                    reply_content="b",
                    reply_tokens=1,
                ),
                lambda: store.ledger.delete_chat(config_id, chat.chat_id),
                lambda: store.tenants.create_config(agent_name="B", company_name="C"),
                lambda: store.tenants.issue_key(config_id),
            ]
            for write in writes:
                with pytest.raises(ledger.NotReplicated):
                    await write()
            assert (await store.ledger.get_chat(config_id, chat.chat_id)).chat_id == chat.chat_id
        finally:
            await store.client.aclose()

    async def test_script_writes_share_their_wait(self, topology: SentinelTopology) -> None:
        """Many concurrent top-ups all succeed, with fewer WAITs than writes: a WAIT blocks its
        connection, so the writes that come meanwhile go together behind the next one."""
        store = await Store.open(topology.url, Durability(1, 1000))
        try:
            chat = await store.ledger.create_chat(store.config, 100_000)
            with redis.Redis(port=topology.primary.port, decode_responses=True) as node:
                node.config_resetstat()
                await asyncio.gather(*(store.top_up(chat.chat_id) for _ in range(200)))
                waits = int(node.info("commandstats")["cmdstat_wait"]["calls"])
            assert (await store.ledger.get_chat(store.config.config_id, chat.chat_id)).limit_milli == 300_000
            assert 1 <= waits < 200
        finally:
            await store.client.aclose()


async def test_the_api_answers_503_not_replicated(
    topology: SentinelTopology, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> None:
    """Through the API: a new chat no replica acknowledged is 503 `not_replicated` with Retry-After."""
    settings = Settings(
        redis_sentinel_url=topology.url,
        durability="replica",
        durability_timeout_ms=100,
        key_prefix="clsentinel",
    )
    store = await Store.open(topology.url, settings.durability_wait)
    try:
        api_key = (await store.tenants.issue_key(store.config.config_id)).api_key
        client = await aiohttp_client(create_app(settings, redis=store.client))
        for proxy in topology.proxies:
            proxy.cut()
        response = await client.post("/chats/", json={"token_limit": 10.0}, headers={"X-API-Key": api_key})
        body = await response.json()
        assert (response.status, body["code"], response.headers["Retry-After"]) == (
            503,
            "not_replicated",
            "1",
        )
    finally:
        await store.client.aclose()


async def test_a_retried_message_is_answered_once_a_replica_has_it(
    topology: SentinelTopology, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> None:
    """A message whose settle no replica acknowledged is 503 `not_replicated`; its retry with the same
    Idempotency-Key is refused too while the replicas are cut off (the saved reply is not on a replica
    yet), then answered with the first reply once they catch up: one exchange, charged once."""
    settings = Settings(
        redis_sentinel_url=topology.url,
        durability="replica",
        durability_timeout_ms=100,
        key_prefix="clsentinel",
    )
    store = await Store.open(topology.url, settings.durability_wait)
    try:
        headers = {"X-API-Key": (await store.tenants.issue_key(store.config.config_id)).api_key}
        client = await aiohttp_client(create_app(settings, redis=store.client))
        created = await client.post("/chats/", json={"token_limit": 1000.0}, headers=headers)
        chat_id = (await created.json())["chat_id"]
        message = {"chat_id": chat_id, "content": "Hello there"}
        retry = {**headers, "Idempotency-Key": "message-1"}
        for proxy in topology.proxies:
            proxy.cut()
        statuses = []
        for _ in range(2):
            response = await client.post("/chats/messages/", json=message, headers=retry)
            statuses.append((response.status, (await response.json())["code"]))
        for proxy in topology.proxies:
            proxy.heal()
        answered = await client.post("/chats/messages/", json=message, headers=retry)
        again = await client.post("/chats/messages/", json=message, headers=retry)

        assert statuses == [(503, "not_replicated")] * 2
        assert answered.status == again.status == 200
        assert (await answered.json()) == (await again.json())
        history = await store.ledger.read_history(
            store.config.config_id, chat_id, ledger.HistoryQuery(limit=10)
        )
        assert [m.is_user for m in history.items] == [True, False]
        state = await store.ledger.get_chat(store.config.config_id, chat_id)
        assert (state.used_milli, state.reserved_milli) == (history.items[1].charged_milli, 0)
    finally:
        await store.client.aclose()


class PausingModel(OfflineModel):
    """The offline model, holding each reply until `release` is set: a failover happens meanwhile."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, request: CompletionRequest) -> Completion:
        self.called.set()
        await self.release.wait()
        return await super().complete(request)


async def test_a_hold_lost_in_a_failover_is_503_and_the_retry_runs_once(
    topology: SentinelTopology, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> None:
    """The reserve is not waited for: a primary killed while the model replies, with its replicas cut
    off, takes the hold with it, and the settle on the promoted replica finds none. That is a 503 (the
    store lost it; nothing is charged), not a 500, and the retry with the same key runs once."""
    settings = Settings(
        redis_sentinel_url=topology.url,
        durability="replica",
        durability_timeout_ms=300,
        key_prefix="clsentinel",
    )
    store = await Store.open(topology.url, settings.durability_wait)
    model = PausingModel()
    try:
        headers = {"X-API-Key": (await store.tenants.issue_key(store.config.config_id)).api_key}
        client = await aiohttp_client(create_app(settings, redis=store.client, provider=model))
        created = await client.post("/chats/", json={"token_limit": 1000.0}, headers=headers)
        chat_id = (await created.json())["chat_id"]
        topology.wait_replicated()
        retry = {**headers, "Idempotency-Key": "message-2"}
        message = {"chat_id": chat_id, "content": "Hello there"}
        for proxy in topology.proxies:
            proxy.cut()
        sent = asyncio.create_task(client.post("/chats/messages/", json=message, headers=retry))
        await asyncio.wait_for(model.called.wait(), RECOVERY_S)
        old = topology.kill_primary()
        await asyncio.to_thread(topology.wait_promoted, old)
        model.release.set()
        first = await sent
        assert (first.status, (await first.json())["code"]) == (503, "store_unavailable")

        deadline = time.monotonic() + RECOVERY_S
        while (again := await client.post("/chats/messages/", json=message, headers=retry)).status == 503:
            assert time.monotonic() < deadline, await again.text()
            await asyncio.sleep(0.1)
        assert again.status == 200, await again.text()
        history = await store.ledger.read_history(
            store.config.config_id, chat_id, ledger.HistoryQuery(limit=10)
        )
        assert [m.is_user for m in history.items] == [True, False]
        state = await store.ledger.get_chat(store.config.config_id, chat_id)
        assert (state.used_milli, state.reserved_milli) == (history.items[1].charged_milli, 0)
    finally:
        model.release.set()
        await store.client.aclose()
