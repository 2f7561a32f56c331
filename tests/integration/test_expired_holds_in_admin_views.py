"""Holds past their deadline are not shown as reserved by the ledger's admin reads (inspect_chat and
reconcile): reading a chat there expires them first, atomically, as the next reserve would have."""

from __future__ import annotations

import asyncio

import pytest

from ledger import ChatNotFound, ConfigRecord, Keyspace, Ledger, LedgerLimits, RedisClient
from tests.integration.helpers import reserve, settle

SHORT_TTL_MS = 50


async def dead_worker_hold(redis: RedisClient, keys: Keyspace, config: ConfigRecord, chat_id: str) -> int:
    """A hold whose worker 'died': reserved with a short deadline and never settled. Returns its grant,
    after its deadline has passed."""
    short = Ledger(redis, keys, LedgerLimits(reservation_ttl_ms=SHORT_TTL_MS))
    hold = await reserve(short, config, chat_id, prompt_tokens=10, completion_tokens_max=100)
    await asyncio.sleep(SHORT_TTL_MS * 3 / 1000)
    return hold.granted_milli


class TestInspect:
    async def test_due_holds_are_expired_on_read(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient, keyspace: Keyspace
    ) -> None:
        chat = await ledger.create_chat(config, 1_000_000)
        granted = await dead_worker_hold(redis_client, keyspace, config, chat.chat_id)
        # The raw counters still hold it: nothing reaped it yet.
        assert (await ledger.get_chat(None, chat.chat_id)).reserved_milli == granted

        shown = await ledger.inspect_chat(chat.chat_id)
        assert (shown.reserved_milli, shown.expired, shown.used_milli) == (0, 1, 0)
        assert (await ledger.get_chat(None, chat.chat_id)).reserved_milli == 0
        ops = [entry.op for entry in await ledger.read_journal(chat.chat_id)]
        assert ops == ["create", "reserve", "expire"]

    async def test_open_holds_stay_reserved(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient, keyspace: Keyspace
    ) -> None:
        """Only holds past their deadline go: a live one is still reserved, beside the dead one."""
        chat = await ledger.create_chat(config, 1_000_000)
        await dead_worker_hold(redis_client, keyspace, config, chat.chat_id)
        live = await reserve(ledger, config, chat.chat_id)
        shown = await ledger.inspect_chat(chat.chat_id)
        assert (shown.reserved_milli, shown.expired) == (live.granted_milli, 1)
        await settle(ledger, live, charge_milli=1_000)
        assert (await ledger.inspect_chat(chat.chat_id)).reserved_milli == 0

    async def test_reconciliation_counts_them_expired(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient, keyspace: Keyspace
    ) -> None:
        chat = await ledger.create_chat(config, 1_000_000)
        await dead_worker_hold(redis_client, keyspace, config, chat.chat_id)
        result = await ledger.reconcile(chat.chat_id)
        assert (result.chat.reserved_milli, result.reserved_sum_milli, result.expired) == (0, 0, 1)
        assert result.ok

    async def test_unknown_chat(self, ledger: Ledger) -> None:
        with pytest.raises(ChatNotFound):
            await ledger.inspect_chat("5b7a3c1e-0000-4000-8000-000000000000")
