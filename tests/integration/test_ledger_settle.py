"""Settle and void: how a hold is resolved, once (design.md section 4, style.md 8)."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from ledger import (
    ChatDeleted,
    ConfigRecord,
    HistoryQuery,
    Keyspace,
    Ledger,
    Reservation,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationNotFound,
)
from tests.integration.helpers import chat_snapshot, meta_field, reserve, settle


class TestSettle:
    async def test_charges_and_releases_the_rest(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Settle charges the actual cost, releases the rest of the hold and reports the new balance."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        settlement = await settle(ledger, reservation, charge_milli=34_567)
        assert (settlement.charged_milli, settlement.clamped_milli) == (34_567, 0)
        assert (settlement.limit_milli, settlement.used_milli, settlement.reserved_milli) == (
            1_000_000,
            34_567,
            0,
        )
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.limit_milli, state.used_milli, state.reserved_milli) == (1_000_000, 34_567, 0)

    async def test_appends_user_then_reply(self, ledger: Ledger, config: ConfigRecord) -> None:
        """The user message and the reply are appended as a pair, user first, as the settlement says."""
        chat = await ledger.create_chat(config, 1_000_000)
        settlement = await settle(
            ledger,
            await reserve(ledger, config, chat.chat_id),
            charge_milli=20_000,
            user="What is 2+2?",
            reply="4",
            user_tokens=6,
            reply_tokens=1,
            flags="e",
        )
        page = await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        assert page.total == 2
        assert page.items == [settlement.user_message, settlement.ai_message]
        user, ai = page.items
        assert (user.is_user, user.content, user.tokens, user.charged_milli, user.flags) == (
            True,
            "What is 2+2?",
            6,
            0,
            "",
        )
        assert (ai.is_user, ai.content, ai.tokens, ai.charged_milli, ai.flags) == (False, "4", 1, 20_000, "e")
        assert user.message_id < ai.message_id
        assert user.timestamp_ms <= ai.timestamp_ms

    async def test_pairs_stay_in_order(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Exchanges settled in a different order than reserved append whole pairs in settle order."""
        chat = await ledger.create_chat(config, 1_000_000)
        first = await reserve(ledger, config, chat.chat_id)
        second = await reserve(ledger, config, chat.chat_id)
        await settle(ledger, second, charge_milli=1, user="q2", reply="a2")
        await settle(ledger, first, charge_milli=1, user="q1", reply="a1")
        page = await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        assert [message.content for message in page.items] == ["q2", "a2", "q1", "a1"]

    async def test_charge_above_the_grant_is_clamped_to_it(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """A cost above the grant is charged the grant even when the chat could pay more: the hold is
        the most an exchange can cost, and the excess is recorded as clamped ('s', the meta, the journal)."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
        assert reservation.granted_milli == 2_000
        settlement = await settle(ledger, reservation, charge_milli=50_000)
        assert (settlement.charged_milli, settlement.clamped_milli) == (2_000, 48_000)
        assert (settlement.used_milli, settlement.reserved_milli) == (2_000, 0)
        assert settlement.ai_message.flags == "s"
        assert await meta_field(redis_client, keyspace, chat.chat_id, "clamped") == 48_000
        journal = await ledger.read_journal(chat.chat_id)
        assert (journal[-1].op, journal[-1].used_delta_milli, journal[-1].clamped_milli) == (
            "settle",
            2_000,
            48_000,
        )

    @pytest.mark.parametrize("flags", ["", "t"])
    async def test_clamps_a_charge_the_chat_cannot_pay(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        redis_client: Redis,
        keyspace: Keyspace,
        flags: str,
    ) -> None:
        """A cost above what the chat has left is charged its hold, here the whole limit; the excess is
        recorded as clamped and flagged 's'."""
        chat = await ledger.create_chat(config, 20_000)
        reservation = await reserve(ledger, config, chat.chat_id, prompt_tokens=5, completion_tokens_max=100)
        assert reservation.granted_milli == 20_000
        settlement = await settle(ledger, reservation, charge_milli=25_500, flags=flags)
        assert (settlement.charged_milli, settlement.clamped_milli) == (20_000, 5_500)
        assert (settlement.used_milli, settlement.reserved_milli) == (20_000, 0)
        assert settlement.ai_message.flags == flags + "s"
        assert settlement.ai_message.charged_milli == 20_000
        page = await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        assert page.items[-1].flags == flags + "s"
        assert page.items[-1].charged_milli == 20_000
        assert await meta_field(redis_client, keyspace, chat.chat_id, "clamped") == 5_500

    async def test_clamp_leaves_other_holds_payable(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A clamped charge takes its own hold only, never the chat's free balance or another
        exchange's open hold."""
        chat = await ledger.create_chat(config, 100_000)
        first = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=20)
        second = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=20)
        assert first.granted_milli == second.granted_milli == 30_000
        settlement = await settle(ledger, first, charge_milli=500_000)
        assert (settlement.charged_milli, settlement.clamped_milli) == (30_000, 470_000)
        assert (settlement.used_milli, settlement.reserved_milli) == (30_000, 30_000)
        final = await settle(ledger, second, charge_milli=second.granted_milli)
        assert (final.charged_milli, final.clamped_milli) == (30_000, 0)
        assert (final.used_milli, final.reserved_milli) == (60_000, 0)

    async def test_zero_charge(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A free exchange (charge 0) still writes the pair and releases the hold."""
        chat = await ledger.create_chat(config, 100_000)
        settlement = await settle(ledger, await reserve(ledger, config, chat.chat_id), charge_milli=0)
        assert (settlement.charged_milli, settlement.used_milli, settlement.reserved_milli) == (0, 0, 0)
        assert (await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=5))).total == 2

    async def test_replayed_settle_changes_nothing(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Settling the same reservation again raises ReservationAlreadySettled and charges nothing."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        await settle(ledger, reservation, charge_milli=10_000)
        before = await chat_snapshot(redis_client, keyspace, chat.chat_id)
        with pytest.raises(ReservationAlreadySettled):
            await settle(ledger, reservation, charge_milli=10_000)
        with pytest.raises(ReservationAlreadySettled):
            await ledger.void(reservation)
        assert await chat_snapshot(redis_client, keyspace, chat.chat_id) == before

    async def test_unknown_reservation(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A reservation id the chat never granted raises ReservationNotFound on settle and void."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        forged = Reservation(
            chat_id=chat.chat_id,
            reservation_id=uuid.uuid4().hex,
            granted_milli=1,
            prompt_milli=1,
            completion_tokens_max=1,
            context=[],
        )
        with pytest.raises(ReservationNotFound):
            await settle(ledger, forged, charge_milli=1)
        with pytest.raises(ReservationNotFound):
            await ledger.void(forged)
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (0, reservation.granted_milli)

    async def test_after_delete_voids_the_hold(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """A chat deleted during the model call: settle releases the hold, charges and writes nothing."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await settle(ledger, reservation, charge_milli=10_000)
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (0, 0)
        assert await redis_client.xlen(keyspace.chat_messages(chat.chat_id)) == 0
        with pytest.raises(ReservationAlreadyVoided):
            await settle(ledger, reservation, charge_milli=10_000)


class TestVoid:
    async def test_releases_without_charging_or_writing(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Void returns the whole hold, charges nothing and writes no history."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        assert await ledger.void(reservation) == reservation.granted_milli
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (0, 0)
        assert await redis_client.xlen(keyspace.chat_messages(chat.chat_id)) == 0

    async def test_replayed_void_changes_nothing(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Voiding or settling a voided reservation raises ReservationAlreadyVoided and changes nothing."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        await ledger.void(reservation)
        before = await chat_snapshot(redis_client, keyspace, chat.chat_id)
        with pytest.raises(ReservationAlreadyVoided):
            await ledger.void(reservation)
        with pytest.raises(ReservationAlreadyVoided):
            await settle(ledger, reservation, charge_milli=1)
        assert await chat_snapshot(redis_client, keyspace, chat.chat_id) == before

    async def test_void_after_delete(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A hold on a chat deleted meanwhile can still be voided, returning the budget."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        assert await ledger.void(reservation) == reservation.granted_milli
        assert (await ledger.get_chat(config.config_id, chat.chat_id)).reserved_milli == 0
