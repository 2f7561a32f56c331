"""Held is not spent: a chat whose tokens are only held by messages in flight refuses with TokensHeld
(retryable), never InsufficientTokens (the 402), and holds of a small budget are cut to a share of it so
concurrent messages hold at once."""

from __future__ import annotations

import asyncio
import math

import pytest

from ledger import ConfigRecord, InsufficientTokens, Ledger, LedgerLimits, TenantStore, TokensHeld
from ledger.limits import HOLD_REPLY_FLOOR_TOKENS
from tests.integration.helpers import reserve, settle


def _shared(ledger: Ledger, shares: int) -> Ledger:
    return Ledger(ledger.redis, ledger.keys, LedgerLimits(hold_shares=shares))


class TestHeldIsNotInsufficient:
    async def test_tokens_held_by_another_message(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Replaces test_ledger_exchange's test_open_holds_count_toward_insufficient: a budget held by
        another exchange is TokensHeld with the figures, and nothing is held for the refused one."""
        chat = await ledger.create_chat(config, 20_000)
        first = await reserve(ledger, config, chat.chat_id, prompt_tokens=5, completion_tokens_max=100)
        assert first.granted_milli == 20_000
        with pytest.raises(TokensHeld) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=1)
        held = raised.value
        assert (held.available_milli, held.needed_milli, held.limit_milli) == (0, 2_000, 20_000)
        assert (held.used_milli, held.reserved_milli) == (0, 20_000)
        assert (await ledger.get_chat(None, chat.chat_id)).reserved_milli == 20_000

        # Once the hold settles, what it did not spend comes back and the same request passes.
        await settle(ledger, first, charge_milli=7_000)
        again = await reserve(ledger, config, chat.chat_id, prompt_tokens=1)
        assert again.granted_milli == 13_000

    async def test_insufficient_only_when_unpayable_with_nothing_held(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """limit - used below the minimum is InsufficientTokens even while a hold is open: no settle
        could make it payable."""
        chat = await ledger.create_chat(config, 20_000)
        await settle(ledger, await reserve(ledger, config, chat.chat_id), charge_milli=15_000)
        await reserve(ledger, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=2)
        with pytest.raises(InsufficientTokens) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=5)
        assert (raised.value.needed_milli, raised.value.used_milli) == (6_000, 15_000)
        # Payable with nothing held: held, not insufficient.
        with pytest.raises(TokensHeld):
            await reserve(ledger, config, chat.chat_id, prompt_tokens=4)

    async def test_an_expired_hold_is_neither_held_nor_insufficient(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """Replaces test_ledger_exchange's test_expired_hold_causes_no_phantom_insufficient: a budget
        held by a dead worker's hold is TokensHeld until its deadline, then wholly available."""
        short = Ledger(ledger.redis, ledger.keys, LedgerLimits(reservation_ttl_ms=40))
        chat = await ledger.create_chat(config, 50_000)
        assert (await reserve(short, config, chat.chat_id)).granted_milli == 50_000
        with pytest.raises(TokensHeld):
            await reserve(ledger, config, chat.chat_id)
        await asyncio.sleep(0.1)
        assert (await reserve(ledger, config, chat.chat_id)).granted_milli == 50_000

    async def test_free_completion_still_needs_the_prompt(self, ledger: Ledger, tenants: TenantStore) -> None:
        """Replaces test_ledger_exchange's test of the same name: with free replies the minimum is the
        weighted prompt; held, it is TokensHeld; spent, it is InsufficientTokens."""
        config = await tenants.create_config(
            agent_name="Agent", company_name="Co", prompt_weight_milli=1500, completion_weight_milli=0
        )
        chat = await ledger.create_chat(config, 15_000)
        first = await reserve(ledger, config, chat.chat_id, prompt_tokens=10)
        assert first.granted_milli == 15_000
        with pytest.raises(TokensHeld) as held:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=1)
        assert (held.value.available_milli, held.value.needed_milli) == (0, 1500)
        await settle(ledger, first, charge_milli=15_000)
        with pytest.raises(InsufficientTokens) as raised:
            await reserve(ledger, config, chat.chat_id, prompt_tokens=1)
        assert (raised.value.available_milli, raised.value.needed_milli) == (0, 1500)


class TestHoldSizing:
    @pytest.mark.parametrize("shares", [2, 4, 8])
    async def test_a_small_budget_is_held_a_share_at_a_time(
        self, ledger: Ledger, config: ConfigRecord, shares: int
    ) -> None:
        """Each hold's reply part is ceil(free / shares) reply tokens (at least the floor, at most what
        is free), so several messages hold at once; the holds never pass the limit."""
        book = _shared(ledger, shares)
        limit_tokens = 300
        chat = await book.create_chat(config, limit_tokens * 1000)
        free, holds = limit_tokens, []
        while True:
            try:
                hold = await reserve(book, config, chat.chat_id, prompt_tokens=5, completion_tokens_max=512)
            except TokensHeld:
                break
            reply_free = free - 5
            expected = min(512, reply_free, max(math.ceil(reply_free / shares), HOLD_REPLY_FLOOR_TOKENS))
            assert hold.completion_tokens_max == expected
            assert hold.granted_milli == (5 + expected) * 1000
            free -= 5 + expected
            holds.append(hold)
        assert len(holds) >= min(shares, 3)
        state = await book.get_chat(None, chat.chat_id)
        assert state.reserved_milli == sum(h.granted_milli for h in holds) <= state.limit_milli

    async def test_a_budget_of_many_full_replies_is_held_whole(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """With room for `shares` full replies, a hold asks for the whole reply, as with one share."""
        book = _shared(ledger, 4)
        chat = await book.create_chat(config, (4 * 100 + 10) * 1000)
        hold = await reserve(book, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert hold.completion_tokens_max == 100

    async def test_one_share_holds_everything_free(self, ledger: Ledger, config: ConfigRecord) -> None:
        """The ledger's default (one share) keeps a hold of all that is free, up to the reply wanted."""
        chat = await ledger.create_chat(config, 50_000)
        hold = await reserve(ledger, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert hold.completion_tokens_max == 40

    async def test_the_floor_never_passes_what_is_free(self, ledger: Ledger, config: ConfigRecord) -> None:
        book = _shared(ledger, 8)
        chat = await book.create_chat(config, 15_000)
        hold = await reserve(book, config, chat.chat_id, prompt_tokens=10, completion_tokens_max=100)
        assert (hold.completion_tokens_max, hold.granted_milli) == (5, 15_000)


def test_shares_must_be_positive() -> None:
    with pytest.raises(ValueError, match="hold_shares"):
        LedgerLimits(hold_shares=0)
