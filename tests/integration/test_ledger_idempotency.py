"""Idempotency-Key records written by the scripts that move the balance (design.md section 5)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from ledger import (
    ChatDeleted,
    ConfigRecord,
    DuplicateInFlight,
    ExchangeReplayed,
    IdempotencyKey,
    IdempotencyKeyReused,
    InsufficientTokens,
    Keyspace,
    Ledger,
    LedgerLimits,
    ReservationExpired,
)
from tests.integration.helpers import chat_snapshot, meta_field, reserve, settle


def key(name: str = "retry-1", *parts: str) -> IdempotencyKey:
    return IdempotencyKey.of(name, "send_message", *(parts or ("chat", "hello")))


class TestExchangeIdempotency:
    async def test_completed_exchange_replays_its_reply(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """After a settle, the same key answers the saved reply and changes nothing at all."""
        chat = await ledger.create_chat(config, 100_000)
        first = await reserve(ledger, config, chat.chat_id, idempotency=key())
        settled = await settle(ledger, first, charge_milli=7_000, reply="the answer")
        before = await chat_snapshot(redis_client, keyspace, chat.chat_id)
        with pytest.raises(ExchangeReplayed) as replay:
            await reserve(ledger, config, chat.chat_id, idempotency=key())
        assert replay.value.message == settled.ai_message
        assert await chat_snapshot(redis_client, keyspace, chat.chat_id) == before

    async def test_replay_outlives_running_out_of_tokens_and_deletion(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A completed exchange is replayed even when the chat could no longer pay or was deleted."""
        chat = await ledger.create_chat(config, 20_000)
        settled = await settle(
            ledger, await reserve(ledger, config, chat.chat_id, idempotency=key()), charge_milli=20_000
        )
        with pytest.raises(InsufficientTokens):
            await reserve(ledger, config, chat.chat_id)
        with pytest.raises(ExchangeReplayed) as replay:
            await reserve(ledger, config, chat.chat_id, idempotency=key())
        assert replay.value.message == settled.ai_message
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ExchangeReplayed):
            await reserve(ledger, config, chat.chat_id, idempotency=key())

    async def test_open_exchange_is_in_flight(self, ledger: Ledger, config: ConfigRecord) -> None:
        """While the first hold is open, the same key gets DuplicateInFlight and holds nothing more."""
        chat = await ledger.create_chat(config, 100_000)
        first = await reserve(ledger, config, chat.chat_id, idempotency=key())
        with pytest.raises(DuplicateInFlight):
            await reserve(ledger, config, chat.chat_id, idempotency=key())
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert state.reserved_milli == first.granted_milli

    async def test_a_voided_exchange_can_be_retried(self, ledger: Ledger, config: ConfigRecord) -> None:
        """After a void (the model failed), the same key proceeds as a new request."""
        chat = await ledger.create_chat(config, 100_000)
        await ledger.void(await reserve(ledger, config, chat.chat_id, idempotency=key()))
        retry = await reserve(ledger, config, chat.chat_id, idempotency=key())
        settled = await settle(ledger, retry, charge_milli=3_000)
        assert settled.used_milli == 3_000

    async def test_an_expired_exchange_can_be_retried(
        self, redis_client: Redis, keyspace: Keyspace, config: ConfigRecord
    ) -> None:
        """A dead worker's hold expires; then the key's record is stale and a retry proceeds."""
        short = Ledger(redis_client, keyspace, LedgerLimits(reservation_ttl_ms=30))
        await short.start()
        # The retry's own hold has the default deadline: under load it must not expire in this test.
        long = Ledger(redis_client, keyspace)
        chat = await short.create_chat(config, 100_000)
        dead = await reserve(short, config, chat.chat_id, idempotency=key())
        await asyncio.sleep(0.08)
        retry = await reserve(long, config, chat.chat_id, idempotency=key())
        assert await meta_field(redis_client, keyspace, chat.chat_id, "expired") == 1
        with pytest.raises(ReservationExpired):
            await settle(long, dead, charge_milli=1_000)
        assert (await ledger_state(long, config, chat.chat_id)) == (0, retry.granted_milli)

    async def test_same_key_other_request_is_refused(self, ledger: Ledger, config: ConfigRecord) -> None:
        """The key of one message sent with another body is IdempotencyKeyReused, open or completed."""
        chat = await ledger.create_chat(config, 100_000)
        first = await reserve(ledger, config, chat.chat_id, idempotency=key("k", "chat", "hello"))
        with pytest.raises(IdempotencyKeyReused):
            await reserve(ledger, config, chat.chat_id, idempotency=key("k", "chat", "other"))
        await settle(ledger, first, charge_milli=1_000)
        with pytest.raises(IdempotencyKeyReused):
            await reserve(ledger, config, chat.chat_id, idempotency=key("k", "chat", "other"))

    async def test_insufficient_stores_nothing(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """A 402 leaves no record: after a top-up the same key goes through."""
        chat = await ledger.create_chat(config, 1_000)
        with pytest.raises(InsufficientTokens):
            await reserve(ledger, config, chat.chat_id, idempotency=key())
        assert not await redis_client.exists(keyspace.chat_idempotency(chat.chat_id, key().digest))
        await ledger.top_up(config.config_id, chat.chat_id, 100_000)
        await reserve(ledger, config, chat.chat_id, idempotency=key())

    async def test_deleted_chat_without_record_stays_deleted(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A key never used on a deleted chat gets ChatDeleted, not a replay."""
        chat = await ledger.create_chat(config, 100_000)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await reserve(ledger, config, chat.chat_id, idempotency=key())

    async def test_the_record_expires(
        self, redis_client: Redis, keyspace: Keyspace, config: ConfigRecord
    ) -> None:
        """Records live idempotency_ttl_ms: after it, the key is a new request (and is charged)."""
        quick = Ledger(redis_client, keyspace, LedgerLimits(idempotency_ttl_ms=50))
        await quick.start()
        chat = await quick.create_chat(config, 100_000)
        await settle(quick, await reserve(quick, config, chat.chat_id, idempotency=key()), charge_milli=1_000)
        ttl = await redis_client.pttl(keyspace.chat_idempotency(chat.chat_id, key().digest))
        assert 0 < ttl <= 50
        await asyncio.sleep(0.1)
        await settle(quick, await reserve(quick, config, chat.chat_id, idempotency=key()), charge_milli=1_000)
        assert (await quick.get_chat(None, chat.chat_id)).used_milli == 2_000


async def ledger_state(ledger: Ledger, config: ConfigRecord, chat_id: str) -> tuple[int, int]:
    state = await ledger.get_chat(config.config_id, chat_id)
    return state.used_milli, state.reserved_milli


class TestCreateIdempotency:
    async def test_same_key_same_chat_as_created(self, ledger: Ledger, config: ConfigRecord) -> None:
        """The same creation again answers the chat as it was created, even after use and a top-up."""
        create = IdempotencyKey.of("create-1", "create_chat", "50000")
        first = await ledger.create_chat(config, 50_000, idempotency=create)
        await settle(ledger, await reserve(ledger, config, first.chat_id), charge_milli=1_000)
        await ledger.top_up(config.config_id, first.chat_id, 9_000)
        again = await ledger.create_chat(config, 50_000, idempotency=create)
        assert again == first
        page = await ledger.list_chats(config.config_id, offset=0, limit=10)
        assert [c.chat_id for c in page.items] == [first.chat_id]
        assert page.total == 1

    async def test_other_body_is_refused(self, ledger: Ledger, config: ConfigRecord) -> None:
        """The same key with another limit is IdempotencyKeyReused."""
        await ledger.create_chat(config, 5_000, idempotency=IdempotencyKey.of("c", "create_chat", "5000"))
        with pytest.raises(IdempotencyKeyReused):
            await ledger.create_chat(config, 6_000, idempotency=IdempotencyKey.of("c", "create_chat", "6000"))

    async def test_replay_of_a_deleted_chat_keeps_it_out_of_the_listing(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """Replaying the creation of a since-deleted chat answers the original, and lists nothing."""
        create = IdempotencyKey.of("c", "create_chat", "5000")
        first = await ledger.create_chat(config, 5_000, idempotency=create)
        await ledger.delete_chat(config.config_id, first.chat_id)
        assert await ledger.create_chat(config, 5_000, idempotency=create) == first
        assert (await ledger.list_chats(config.config_id, offset=0, limit=10)).total == 0

    async def test_keys_are_per_config(self, ledger: Ledger, tenants: object, config: ConfigRecord) -> None:
        """Two configs using the same key get two different chats."""
        from ledger import TenantStore

        assert isinstance(tenants, TenantStore)
        other = await tenants.create_config(agent_name="B", company_name="B")
        create = IdempotencyKey.of("shared", "create_chat", "5000")
        mine = await ledger.create_chat(config, 5_000, idempotency=create)
        theirs = await ledger.create_chat(other, 5_000, idempotency=create)
        assert mine.chat_id != theirs.chat_id


class TestTopUpIdempotency:
    async def test_same_key_adds_once_and_answers_the_first_balance(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A repeated top-up adds nothing and answers the balance the first one answered."""
        chat = await ledger.create_chat(config, 50_000)
        top = IdempotencyKey.of("t", "top_up", chat.chat_id, "1000")
        first = await ledger.top_up(config.config_id, chat.chat_id, 1_000, idempotency=top)
        await settle(ledger, await reserve(ledger, config, chat.chat_id), charge_milli=2_000)
        again = await ledger.top_up(config.config_id, chat.chat_id, 1_000, idempotency=top)
        assert again == first
        assert (await ledger.get_chat(None, chat.chat_id)).limit_milli == 51_000

    async def test_other_amount_is_refused(self, ledger: Ledger, config: ConfigRecord) -> None:
        """The same key with another amount is IdempotencyKeyReused and adds nothing."""
        chat = await ledger.create_chat(config, 5_000)
        await ledger.top_up(
            config.config_id, chat.chat_id, 1_000, idempotency=IdempotencyKey.of("t", "top_up", "1")
        )
        with pytest.raises(IdempotencyKeyReused):
            await ledger.top_up(
                config.config_id, chat.chat_id, 2_000, idempotency=IdempotencyKey.of("t", "top_up", "2")
            )
        assert (await ledger.get_chat(None, chat.chat_id)).limit_milli == 6_000
