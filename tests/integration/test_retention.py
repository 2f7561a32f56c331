"""Retention of deleted chats: a pass erases the chats deleted before its cutoff, and only those, a
bounded number at a time, on every backend (a real redis-server and a real Redis Cluster included)."""

from __future__ import annotations

import asyncio
import time

from ledger import ConfigRecord, Keyspace, Ledger, RedisClient, TenantStore
from tests.integration.helpers import chat_snapshot
from tests.integration.test_erasure import busy_chat, keys_tagged


async def deleted_chats(book: Ledger, config: ConfigRecord, count: int) -> list[str]:
    chats = [await busy_chat(book, config, exchanges=1) for _ in range(count)]
    for chat_id in chats:
        await book.delete_chat(config.config_id, chat_id)
    return chats


class TestRetentionPass:
    async def test_erases_deleted_before_the_cutoff_only(
        self,
        redis_client: RedisClient,
        keyspace: Keyspace,
        ledger: Ledger,
        tenants: TenantStore,
        config: ConfigRecord,
    ) -> None:
        """Chats deleted before the cutoff go, every key of them; a chat deleted after it, a live chat, a
        chat restored after its deletion and another config's deleted chat are untouched."""
        other = await tenants.create_config(agent_name="Other", company_name="Co")
        old = await deleted_chats(ledger, config, 3)
        others_old = await deleted_chats(ledger, other, 1)
        restored = (await deleted_chats(ledger, config, 1))[0]
        await ledger.restore_chat(restored)
        # The index entry of a restore that crashed before it could drop it: the pass must not trust it.
        await redis_client.zadd(keyspace.config_deleted_chats(config.config_id), {restored: 1})
        await asyncio.sleep(0.01)
        cutoff_ms = int(time.time() * 1000)
        await asyncio.sleep(0.01)
        recent = await deleted_chats(ledger, config, 1)
        live = await busy_chat(ledger, config, exchanges=1)
        untouched = [*recent, restored, live]
        before = [await chat_snapshot(redis_client, keyspace, c) for c in untouched]  # type: ignore[arg-type]

        done = await ledger.erase_deleted_before(cutoff_ms, chats_max=100)

        assert done.erased == len(old) + len(others_old)
        for chat_id in [*old, *others_old]:
            assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []
        assert [await chat_snapshot(redis_client, keyspace, c) for c in untouched] == before  # type: ignore[arg-type]
        index = keyspace.config_deleted_chats(config.config_id)
        assert await redis_client.zrange(index, 0, -1) == recent
        assert (await ledger.erase_deleted_before(cutoff_ms, chats_max=100)).erased == 0

    async def test_a_pass_is_bounded_and_the_next_continues(
        self, redis_client: RedisClient, ledger: Ledger, tenants: TenantStore, config: ConfigRecord
    ) -> None:
        """A pass erases at most `chats_max`; passes from the cursor each returns erase the rest."""
        second = await tenants.create_config(agent_name="Second", company_name="Co")
        chats = await deleted_chats(ledger, config, 4) + await deleted_chats(ledger, second, 3)
        cutoff_ms = int(time.time() * 1000) + 1
        erased, cursor, passes = 0, 0, 0
        while True:
            done = await ledger.erase_deleted_before(cutoff_ms, chats_max=2, cursor=cursor)
            assert done.erased <= 2
            erased, cursor, passes = erased + done.erased, done.cursor, passes + 1
            if done.erased == 0:
                break
        assert (erased, passes) == (len(chats), 5)
        for chat_id in chats:
            assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []

    async def test_one_worker_has_the_turn(self, ledger: Ledger) -> None:
        assert await ledger.retention_turn("a", 10_000)
        assert not await ledger.retention_turn("b", 10_000)
