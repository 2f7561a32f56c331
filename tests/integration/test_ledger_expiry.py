"""Expiry: a hold whose deadline passed is released, and resolving it afterwards is refused (design.md
section 4).
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from ledger import (
    ConfigRecord,
    HistoryQuery,
    Keyspace,
    Ledger,
    LedgerLimits,
    ReservationExpired,
    TokensHeld,
)
from tests.integration.helpers import meta_field, reserve, settle

SHORT_TTL_MS = 50


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
        with pytest.raises(TokensHeld):
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
