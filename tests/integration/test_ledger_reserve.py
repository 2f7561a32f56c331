"""Reserve: what a message holds, and what it is refused (design.md section 4, style.md 8)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ledger import (
    ChatDeleted,
    ConfigRecord,
    InsufficientTokens,
    Keyspace,
    Ledger,
    TenantStore,
    TokensHeld,
)
from tests.integration.helpers import chat_snapshot, reserve, settle


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

    async def test_open_holds_are_held_not_spent(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A chat whose budget is held by another exchange, none of it spent, answers TokensHeld (a
        retry may pass), not InsufficientTokens, with the figures."""
        chat = await ledger.create_chat(config, 20_000)
        await reserve(ledger, config, chat.chat_id, prompt_tokens=5, completion_tokens_max=100)
        with pytest.raises(TokensHeld) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=1)
        held = raised.value
        assert (held.available_milli, held.used_milli, held.reserved_milli) == (0, 0, 20_000)

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
        held = await reserve(ledger, config, chat.chat_id, prompt_tokens=10)
        assert held.granted_milli == 15_000
        await settle(ledger, held, charge_milli=15_000)
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
