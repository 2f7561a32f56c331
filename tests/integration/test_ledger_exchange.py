"""The message flow: reserve -> settle | void | expire (design.md section 4, style.md 8)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from ledger import (
    ChatDeleted,
    ConfigRecord,
    HistoryQuery,
    InsufficientTokens,
    Keyspace,
    Ledger,
    LedgerLimits,
    Reservation,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationExpired,
    ReservationNotFound,
    TenantStore,
)
from tests.integration.helpers import chat_snapshot, meta_field, reserve, settle

SHORT_TTL_MS = 50


async def _exchange(
    ledger: Ledger,
    config: ConfigRecord,
    chat_id: str,
    *,
    user: str,
    reply: str,
    user_tokens: int,
    reply_tokens: int,
) -> None:
    """One cheap settled exchange, to give a chat history."""
    reservation = await reserve(ledger, config, chat_id, prompt_tokens=1, completion_tokens_max=1)
    await settle(
        ledger,
        reservation,
        charge_milli=1,
        user=user,
        reply=reply,
        user_tokens=user_tokens,
        reply_tokens=reply_tokens,
    )


class TestReserve:
    async def test_grants_prompt_plus_max_completion(self, ledger: Ledger, config: ConfigRecord) -> None:
        """With room to spare, the grant is the prompt plus max_tokens reply tokens, at weight 1.0."""
        chat = await ledger.create_chat(config, 1_000_000)
        reservation = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert reservation.chat_id == chat.chat_id
        assert reservation.prompt_milli == 10_000
        assert reservation.completion_tokens_max == 100
        assert reservation.granted_milli == 110_000
        assert reservation.context == []
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (0, 110_000)

    @pytest.mark.parametrize(
        ("limit_milli", "completion_tokens", "granted_milli"),
        [(50_000, 40, 50_000), (50_999, 40, 50_000), (11_000, 1, 11_000), (109_999, 99, 109_000)],
    )
    async def test_caps_the_reply_at_what_the_chat_can_pay(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        limit_milli: int,
        completion_tokens: int,
        granted_milli: int,
    ) -> None:
        """When the chat cannot pay max_tokens, the grant is the prompt plus the whole reply tokens left."""
        chat = await ledger.create_chat(config, limit_milli)
        reservation = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert reservation.completion_tokens_max == completion_tokens
        assert reservation.granted_milli == granted_milli

    async def test_open_holds_reduce_what_is_available(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A second reserve sees only what the first left, and the holds add up in `reserved`."""
        chat = await ledger.create_chat(config, 150_000)
        first = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        second = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert (first.granted_milli, second.granted_milli) == (110_000, 40_000)
        assert second.completion_tokens_max == 30
        assert (await ledger.get_chat(config.config_id, chat.chat_id)).reserved_milli == 150_000
        assert first.reservation_id != second.reservation_id

    async def test_insufficient_tokens_reports_figures_and_holds_nothing(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """When the prompt plus one reply token is not payable, nothing is held and the figures say why."""
        chat = await ledger.create_chat(config, 30_000)
        await settle(ledger, await reserve(ledger, config, chat.chat_id), charge_milli=12_500)
        before = await chat_snapshot(redis_client, keyspace, chat.chat_id)
        with pytest.raises(InsufficientTokens) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=17, completion_tokens_max=100)
        error = raised.value
        assert error.available_milli == 17_500
        assert error.needed_milli == 18_000
        assert error.limit_milli == 30_000
        assert error.used_milli == 12_500
        assert await chat_snapshot(redis_client, keyspace, chat.chat_id) == before

    async def test_exactly_enough_for_one_reply_token(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Available equal to the prompt plus one reply token grants exactly that."""
        chat = await ledger.create_chat(config, 18_000)
        reservation = await reserve(ledger, config, chat.chat_id, prompt_tokens=17, completion_tokens_max=100)
        assert (reservation.granted_milli, reservation.completion_tokens_max) == (18_000, 1)
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert state.reserved_milli == state.limit_milli

    async def test_open_holds_count_toward_insufficient(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A chat whose budget is held by another exchange answers InsufficientTokens with that figure."""
        chat = await ledger.create_chat(config, 20_000)
        await reserve(ledger, config, chat.chat_id, prompt_tokens=5, completion_tokens_max=100)
        with pytest.raises(InsufficientTokens) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=1)
        assert (raised.value.available_milli, raised.value.used_milli) == (0, 0)

    async def test_context_is_recent_history_oldest_first(self, ledger: Ledger, config: ConfigRecord) -> None:
        """The context is the newest messages that fit history_count_max, oldest first, priced in."""
        chat = await ledger.create_chat(config, 10_000_000)
        for n in range(3):
            await _exchange(
                ledger, config, chat.chat_id, user=f"q{n}", reply=f"a{n}", user_tokens=2, reply_tokens=3
            )
        reservation = await reserve(
            ledger,
            config,
            chat.chat_id,
            prompt_tokens=10,
            completion_tokens_max=100,
            history_tokens_max=1000,
            history_count_max=4,
        )
        assert [message.content for message in reservation.context] == ["q1", "a1", "q2", "a2"]
        assert [message.is_user for message in reservation.context] == [True, False, True, False]
        assert reservation.prompt_milli == (10 + 2 + 3 + 2 + 3) * 1000
        assert reservation.granted_milli == reservation.prompt_milli + 100_000

    @pytest.mark.parametrize(
        ("history_tokens_max", "contents"),
        [
            (0, []),
            (2, []),
            (3, ["a2"]),
            (4, ["a2"]),
            (5, ["q2", "a2"]),
            (8, ["a1", "q2", "a2"]),
            (10, ["q1", "a1", "q2", "a2"]),
            (13, ["a0", "q1", "a1", "q2", "a2"]),
            (14, ["a0", "q1", "a1", "q2", "a2"]),
            (15, ["q0", "a0", "q1", "a1", "q2", "a2"]),
            (100, ["q0", "a0", "q1", "a1", "q2", "a2"]),
        ],
    )
    async def test_context_is_trimmed_to_the_token_budget(
        self, ledger: Ledger, config: ConfigRecord, history_tokens_max: int, contents: list[str]
    ) -> None:
        """The context stops at the first older message that would pass history_tokens_max."""
        chat = await ledger.create_chat(config, 10_000_000)
        for n in range(3):
            await _exchange(
                ledger, config, chat.chat_id, user=f"q{n}", reply=f"a{n}", user_tokens=2, reply_tokens=3
            )
        reservation = await reserve(
            ledger,
            config,
            chat.chat_id,
            prompt_tokens=1,
            history_tokens_max=history_tokens_max,
            history_count_max=50,
        )
        assert [message.content for message in reservation.context] == contents
        history_tokens = sum(message.tokens for message in reservation.context)
        assert history_tokens <= history_tokens_max
        assert reservation.prompt_milli == (1 + history_tokens) * 1000

    async def test_context_stops_at_a_message_that_does_not_fit(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A large message ends the context even if older, smaller ones would fit (no gaps)."""
        chat = await ledger.create_chat(config, 10_000_000)
        await _exchange(ledger, config, chat.chat_id, user="old", reply="tiny", user_tokens=1, reply_tokens=1)
        await _exchange(
            ledger, config, chat.chat_id, user="huge", reply="new", user_tokens=50, reply_tokens=1
        )
        reservation = await reserve(ledger, config, chat.chat_id, history_tokens_max=10, history_count_max=10)
        assert [message.content for message in reservation.context] == ["new"]

    async def test_context_counts_toward_insufficient(self, ledger: Ledger, config: ConfigRecord) -> None:
        """History in the context is priced before the 402 check."""
        chat = await ledger.create_chat(config, 100_000)
        await _exchange(ledger, config, chat.chat_id, user="q", reply="a", user_tokens=40, reply_tokens=40)
        with pytest.raises(InsufficientTokens) as raised:
            await reserve(
                ledger, config, chat.chat_id, prompt_tokens=20, history_tokens_max=100, history_count_max=2
            )
        assert raised.value.needed_milli == (20 + 80) * 1000 + 1000
        assert raised.value.available_milli == 100_000 - 1

    async def test_deleted_chat(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A deleted chat takes no messages: reserve raises ChatDeleted."""
        chat = await ledger.create_chat(config, 100_000)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await reserve(ledger, config, chat.chat_id)


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


class TestExpiry:
    async def _short_ledger(self, redis_client: Redis, keyspace: Keyspace) -> Ledger:
        short = Ledger(redis_client, keyspace, LedgerLimits(reservation_ttl_ms=SHORT_TTL_MS))
        await short.start()
        return short

    async def test_next_reserve_reaps_an_expired_hold(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        redis_client: Redis,
        keyspace: Keyspace,
    ) -> None:
        """A dead worker's hold is released by the next reserve after its deadline, and counted."""
        short = await self._short_ledger(redis_client, keyspace)
        chat = await ledger.create_chat(config, 1_000_000)
        stale = await reserve(short, config, chat.chat_id)
        await asyncio.sleep(2 * SHORT_TTL_MS / 1000)
        fresh = await reserve(ledger, config, chat.chat_id)
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (0, fresh.granted_milli)
        assert await meta_field(redis_client, keyspace, chat.chat_id, "expired") == 1
        with pytest.raises(ReservationExpired):
            await settle(ledger, stale, charge_milli=1000)
        with pytest.raises(ReservationExpired):
            await ledger.void(stale)
        assert (await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=5))).total == 0

    async def test_expired_hold_causes_no_phantom_insufficient(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """A budget fully held by an expired reservation is available to the next reserve."""
        short = await self._short_ledger(redis_client, keyspace)
        chat = await ledger.create_chat(config, 50_000)
        held = await reserve(short, config, chat.chat_id)
        assert held.granted_milli == 50_000
        with pytest.raises(InsufficientTokens):
            await reserve(ledger, config, chat.chat_id)
        await asyncio.sleep(2 * SHORT_TTL_MS / 1000)
        assert (await reserve(ledger, config, chat.chat_id)).granted_milli == 50_000

    async def test_late_settle_reaps_its_own_hold(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """A settle after the deadline finds its hold expired, raises, and charges nothing."""
        short = await self._short_ledger(redis_client, keyspace)
        chat = await ledger.create_chat(config, 1_000_000)
        stale = await reserve(short, config, chat.chat_id)
        await asyncio.sleep(2 * SHORT_TTL_MS / 1000)
        with pytest.raises(ReservationExpired):
            await settle(short, stale, charge_milli=1000)
        state = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (state.used_milli, state.reserved_milli) == (0, 0)
        assert await redis_client.xlen(keyspace.chat_messages(chat.chat_id)) == 0

    async def test_live_holds_are_not_reaped(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Only holds past their deadline expire: a long one survives the reap of a short one."""
        short = await self._short_ledger(redis_client, keyspace)
        chat = await ledger.create_chat(config, 1_000_000)
        stale = await reserve(short, config, chat.chat_id)
        alive = await reserve(ledger, config, chat.chat_id)
        await asyncio.sleep(2 * SHORT_TTL_MS / 1000)
        settlement = await settle(ledger, alive, charge_milli=5000)
        assert (settlement.used_milli, settlement.reserved_milli) == (5000, 0)
        assert await meta_field(redis_client, keyspace, chat.chat_id, "expired") == 1
        with pytest.raises(ReservationExpired):
            await ledger.void(stale)


class TestWeights:
    async def _config(self, tenants: TenantStore, prompt: int, completion: int) -> ConfigRecord:
        return await tenants.create_config(
            agent_name="Agent",
            company_name="Co",
            prompt_weight_milli=prompt,
            completion_weight_milli=completion,
        )

    async def test_weighted_prompt_and_free_completion(self, ledger: Ledger, tenants: TenantStore) -> None:
        """With prompt weight 1.5 and free replies, the grant is the weighted prompt and max_tokens stands."""
        config = await self._config(tenants, 1500, 0)
        chat = await ledger.create_chat(config, 100_000)
        reservation = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert reservation.prompt_milli == 15_000
        assert reservation.completion_tokens_max == 100
        assert reservation.granted_milli == 15_000

    async def test_free_completion_still_needs_the_prompt(self, ledger: Ledger, tenants: TenantStore) -> None:
        """With free replies, 402 comes only when the weighted prompt is not payable."""
        config = await self._config(tenants, 1500, 0)
        chat = await ledger.create_chat(config, 15_000)
        assert (await reserve(ledger, config, chat.chat_id, prompt_tokens=10)).granted_milli == 15_000
        with pytest.raises(InsufficientTokens) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=1)
        assert (raised.value.available_milli, raised.value.needed_milli) == (0, 1500)

    async def test_weighted_completion_caps_reply_tokens(self, ledger: Ledger, tenants: TenantStore) -> None:
        """With completion weight 2.5, the reply tokens granted are what the rest pays for at 2.5 each."""
        config = await self._config(tenants, 1000, 2500)
        chat = await ledger.create_chat(config, 50_000)
        reservation = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert reservation.completion_tokens_max == 16
        assert reservation.granted_milli == 10_000 + 16 * 2500

    async def test_one_weighted_reply_token_is_the_minimum(
        self, ledger: Ledger, tenants: TenantStore
    ) -> None:
        """The 402 rule needs the prompt plus one reply token at the completion weight."""
        config = await self._config(tenants, 500, 2500)
        chat = await ledger.create_chat(config, 7_499)
        with pytest.raises(InsufficientTokens) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=10)
        assert (raised.value.available_milli, raised.value.needed_milli) == (7_499, 5_000 + 2_500)

    async def test_history_is_priced_at_the_prompt_weight(self, ledger: Ledger, tenants: TenantStore) -> None:
        """Context tokens cost the prompt weight, like the new message."""
        config = await self._config(tenants, 1500, 1000)
        chat = await ledger.create_chat(config, 10_000_000)
        await _exchange(ledger, config, chat.chat_id, user="q", reply="a", user_tokens=4, reply_tokens=8)
        reservation = await reserve(
            ledger,
            config,
            chat.chat_id,
            prompt_tokens=10,
            completion_tokens_max=5,
            history_tokens_max=100,
            history_count_max=10,
        )
        assert reservation.prompt_milli == (10 + 4 + 8) * 1500
        assert reservation.granted_milli == reservation.prompt_milli + 5 * 1000
