"""The usage journal: one entry per balance move, written by the moving script, reconciling exactly."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from ledger import ChatDeleted, ConfigRecord, InsufficientTokens, Keyspace, Ledger, LedgerLimits
from tests.integration.helpers import reserve, settle


class TestJournal:
    async def test_every_move_is_journaled_and_reconciles(
        self, redis_client: Redis, keyspace: Keyspace, config: ConfigRecord
    ) -> None:
        """create, reserve, settle (clamped at its hold), void, expire and top_up each leave one entry,
        and the entries' deltas add up to used, reserved and limit."""
        ledger = Ledger(redis_client, keyspace, LedgerLimits(reservation_ttl_ms=40))
        await ledger.start()
        chat = await ledger.create_chat(config, 50_000)
        settled = await settle(ledger, await reserve(ledger, config, chat.chat_id), charge_milli=8_000)
        await ledger.void(await reserve(ledger, config, chat.chat_id))
        await reserve(ledger, config, chat.chat_id)  # left to expire
        await ledger.top_up(config.config_id, chat.chat_id, 1_000)
        await asyncio.sleep(0.08)
        greedy = await reserve(ledger, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(ledger, greedy, charge_milli=500_000)  # far above its hold: clamped

        entries = await ledger.read_journal(chat.chat_id)
        assert [e.op for e in entries] == [
            "create", "reserve", "settle", "reserve", "void",
            "reserve", "top_up", "expire", "reserve", "settle",
        ]  # fmt: skip
        assert entries[2].used_delta_milli == settled.charged_milli == 8_000
        assert entries[-1].clamped_milli > 0
        result = await ledger.reconcile(chat.chat_id)
        assert result.ok
        assert result.entries == len(entries)
        assert result.expired == 1
        assert result.chat.used_milli == result.used_sum_milli == 8_000 + greedy.granted_milli
        assert entries[-1].clamped_milli == 500_000 - greedy.granted_milli
        assert result.clamped_milli == entries[-1].clamped_milli

    async def test_refusals_write_nothing(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A 402 and a message to a deleted chat leave the journal as it was."""
        chat = await ledger.create_chat(config, 1_000)
        with pytest.raises(InsufficientTokens):
            await reserve(ledger, config, chat.chat_id)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await reserve(ledger, config, chat.chat_id)
        assert [e.op for e in await ledger.read_journal(chat.chat_id)] == ["create"]

    async def test_paged_reads(self, ledger: Ledger, config: ConfigRecord) -> None:
        """read_journal pages by entry id, and reconcile reads past one page."""
        chat = await ledger.create_chat(config, 10**9)
        for _ in range(30):
            await settle(ledger, await reserve(ledger, config, chat.chat_id), charge_milli=1_000)
        first = await ledger.read_journal(chat.chat_id, count=10)
        rest = await ledger.read_journal(chat.chat_id, after=first[-1].entry_id, count=1000)
        # 61 moves pass the journal's window: the oldest are folded into the checkpoint listed first.
        assert first[0].op == "checkpoint"
        folded = int(await ledger.redis.hget(ledger.keys.chat_meta(chat.chat_id), "jn"))  # type: ignore[arg-type]
        assert folded + len(first) - 1 + len(rest) == 61
        result = await ledger.reconcile(chat.chat_id)
        assert result.ok
        assert result.entries == 61
