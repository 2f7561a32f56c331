"""Operator operations: config update and delete, chat restore, the admin history, API-key rate limits."""

from __future__ import annotations

import asyncio

import pytest

from ledger import (
    ChatDeleted,
    ChatNotDeleted,
    ChatNotFound,
    ConfigRecord,
    HistoryQuery,
    Ledger,
    TenantStore,
)
from ledger.tenants import key_digest
from tests.integration.helpers import reserve, settle


class TestConfigLifecycle:
    async def test_update_changes_fields_and_the_update_time(
        self, tenants: TenantStore, config: ConfigRecord
    ) -> None:
        """update_config changes only the given fields and moves updated_ms forward."""
        await asyncio.sleep(0.002)
        updated = await tenants.update_config(config.config_id, primary_color="#000000", rate_limit_per_s=2.5)
        assert (updated.primary_color, updated.rate_limit_per_s) == ("#000000", 2.5)
        assert updated.agent_name == config.agent_name
        assert updated.updated_ms > config.updated_ms
        assert await tenants.get_config(config.config_id) == updated

    async def test_delete_revokes_every_key(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """Deleting a config makes all its keys unknown and removes it from the listing."""
        keys = [await tenants.issue_key(config.config_id) for _ in range(3)]
        assert await tenants.delete_config(config.config_id)
        assert [await tenants.resolve_key(k.api_key) for k in keys] == [None, None, None]
        assert await tenants.get_config(config.config_id) is None
        assert config.config_id not in await tenants.list_config_ids()
        assert not await tenants.delete_config(config.config_id)


class TestRestore:
    async def test_restore_undoes_a_soft_delete(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A restored chat takes messages again and lists where it was."""
        first = await ledger.create_chat(config, 100_000)
        second = await ledger.create_chat(config, 100_000)
        await ledger.delete_chat(config.config_id, first.chat_id)
        restored = await ledger.restore_chat(first.chat_id)
        assert restored.deleted is False
        page = await ledger.list_chats(config.config_id, offset=0, limit=10)
        assert [c.chat_id for c in page.items] == [first.chat_id, second.chat_id]
        await settle(ledger, await reserve(ledger, config, first.chat_id), charge_milli=1_000)

    async def test_restore_refuses_live_and_unknown_chats(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Only a deleted chat can be restored."""
        chat = await ledger.create_chat(config, 1_000)
        with pytest.raises(ChatNotDeleted):
            await ledger.restore_chat(chat.chat_id)
        with pytest.raises(ChatNotFound):
            await ledger.restore_chat("5b7a3c1e-0000-4000-8000-000000000000")


class TestAdminHistory:
    async def test_reads_any_chat_deleted_included(self, ledger: Ledger, config: ConfigRecord) -> None:
        """With no config id, history is served for a deleted chat, which its owner cannot read."""
        chat = await ledger.create_chat(config, 100_000)
        await settle(ledger, await reserve(ledger, config, chat.chat_id), charge_milli=1_000, user="kept")
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        page = await ledger.read_history(None, chat.chat_id, HistoryQuery(limit=10))
        assert [m.content for m in page.items] == ["kept", "answer"]
        with pytest.raises(ChatNotFound):
            await ledger.read_history(None, "5b7a3c1e-0000-4000-8000-000000000000", HistoryQuery(limit=10))


class TestRateLimit:
    async def test_burst_then_refusal_with_a_wait(self, tenants: TenantStore) -> None:
        """A key gets `burst` requests at once, then a refusal that says how long to wait."""
        digest = key_digest("clk_rate")
        results = [await tenants.rate_limit(digest, per_s=1.0, burst=3) for _ in range(4)]
        assert results[:3] == [None, None, None]
        assert results[3] is not None
        assert 0 < results[3] <= 1.0

    async def test_refill_at_the_rate(self, tenants: TenantStore) -> None:
        """After the emission interval, one more request is allowed."""
        digest = key_digest("clk_refill")
        assert await tenants.rate_limit(digest, per_s=20.0, burst=1) is None
        assert await tenants.rate_limit(digest, per_s=20.0, burst=1) is not None
        await asyncio.sleep(0.06)
        assert await tenants.rate_limit(digest, per_s=20.0, burst=1) is None

    async def test_keys_are_metered_apart(self, tenants: TenantStore) -> None:
        """One key's burst does not spend another's."""
        assert await tenants.rate_limit(key_digest("a"), per_s=1.0, burst=1) is None
        assert await tenants.rate_limit(key_digest("a"), per_s=1.0, burst=1) is not None
        assert await tenants.rate_limit(key_digest("b"), per_s=1.0, burst=1) is None
