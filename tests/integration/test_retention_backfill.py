"""Retention of chats deleted before the per-config deleted index existed: the pass backfills the
index from each config's all-chats index, a bounded page at a time, and then erases them like any
other; restored and live chats are untouched; once backfilled, a pass costs the same whatever the
number of chats. On every backend (a real redis-server and a real Redis Cluster included)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from redis.asyncio import Redis

from ledger import ConfigRecord, Keyspace, Ledger, RedisClient, TenantStore
from tests.integration.helpers import chat_snapshot
from tests.integration.test_erasure import busy_chat, keys_tagged


async def old_deleted(book: Ledger, redis: RedisClient, keys: Keyspace, config: ConfigRecord) -> str:
    """A chat deleted as the code before the deleted index did: flagged, out of the live index, and
    in no deleted index."""
    chat_id = await busy_chat(book, config, exchanges=1)
    await book.delete_chat(config.config_id, chat_id)
    await redis.zrem(keys.config_deleted_chats(config.config_id), chat_id)
    return chat_id


async def deleted_index(redis: RedisClient, keys: Keyspace, config: ConfigRecord) -> dict[str, int]:
    entries = await redis.zrange(keys.config_deleted_chats(config.config_id), 0, -1, withscores=True)
    return {chat_id: int(score) for chat_id, score in cast(list[tuple[str, float]], entries)}


async def now_ms_after_a_tick() -> int:
    """A time strictly after everything done so far and strictly before everything done next."""
    await asyncio.sleep(0.01)
    now = int(time.time() * 1000)
    await asyncio.sleep(0.01)
    return now


class TestBackfill:
    async def test_old_deleted_chats_are_erased_restored_and_live_ones_kept(
        self,
        redis_client: RedisClient,
        keyspace: Keyspace,
        ledger: Ledger,
        tenants: TenantStore,
        config: ConfigRecord,
    ) -> None:
        """Chats deleted before the index existed and before the cutoff go, every key of them, in
        every config; one deleted after the cutoff is indexed at its own deletion time and kept; a
        restored chat (an old deletion, restored) and a live chat are byte for byte as they were."""
        other = await tenants.create_config(agent_name="Other", company_name="Co")
        old = [await old_deleted(ledger, redis_client, keyspace, config) for _ in range(3)]
        others_old = await old_deleted(ledger, redis_client, keyspace, other)
        restored = await old_deleted(ledger, redis_client, keyspace, config)
        await ledger.restore_chat(restored)
        cutoff_ms = await now_ms_after_a_tick()
        recent = await old_deleted(ledger, redis_client, keyspace, config)
        live = await busy_chat(ledger, config, exchanges=1)
        untouched = [recent, restored, live]
        before = [await chat_snapshot(redis_client, keyspace, c) for c in untouched]  # type: ignore[arg-type]

        done = await ledger.erase_deleted_before(cutoff_ms, chats_max=100)

        assert (done.erased, done.backfilled) == (len(old) + 1, len(old) + 2)
        for chat_id in [*old, others_old]:
            assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []
        assert [await chat_snapshot(redis_client, keyspace, c) for c in untouched] == before  # type: ignore[arg-type]
        recent_deleted_ms = (await ledger.get_chat(None, recent)).deleted_ms
        assert await deleted_index(redis_client, keyspace, config) == {recent: recent_deleted_ms}
        again = await ledger.erase_deleted_before(cutoff_ms, chats_max=100)
        assert (again.erased, again.backfilled) == (0, 0)
        # Its retention ends like any other deleted chat's.
        assert (await ledger.erase_deleted_before(recent_deleted_ms + 1, chats_max=100)).erased == 1
        assert await keys_tagged(redis_client, f"{{c:{recent}}}") == []

    async def test_a_chat_restored_after_it_was_indexed_is_kept(
        self, redis_client: RedisClient, keyspace: Keyspace, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """The backfill read the chat deleted, then it was restored before the index entry was written:
        the stale entry is refused by the erasure's own check on the chat's slot, and dropped."""
        chat_id = await old_deleted(ledger, redis_client, keyspace, config)
        deleted_ms = (await ledger.get_chat(None, chat_id)).deleted_ms
        await ledger.restore_chat(chat_id)
        # What the backfill writes when the restore lands between its read and its write.
        await redis_client.zadd(
            keyspace.config_deleted_chats(config.config_id), {chat_id: deleted_ms}, nx=True
        )
        before = await chat_snapshot(redis_client, keyspace, chat_id)  # type: ignore[arg-type]

        done = await ledger.erase_deleted_before(await now_ms_after_a_tick(), chats_max=100)

        assert done.erased == 0
        assert await chat_snapshot(redis_client, keyspace, chat_id) == before  # type: ignore[arg-type]
        assert await deleted_index(redis_client, keyspace, config) == {}

    async def test_a_deleted_chat_without_a_deletion_time_starts_its_retention_at_the_backfill(
        self, redis_client: RedisClient, keyspace: Keyspace, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """No `deleted_at` (or 0) in the meta: indexed at the backfill's time, so it is erased one
        retention period after the backfill, never at once; a second backfill does not move it."""
        chat_id = await old_deleted(ledger, redis_client, keyspace, config)
        await redis_client.hdel(keyspace.chat_meta(chat_id), "deleted_at")
        before_backfill = await now_ms_after_a_tick()

        done = await ledger.erase_deleted_before(before_backfill, chats_max=100)

        assert (done.erased, done.backfilled) == (0, 1)
        after_backfill = await now_ms_after_a_tick()
        indexed_ms = (await deleted_index(redis_client, keyspace, config))[chat_id]
        assert before_backfill < indexed_ms < after_backfill
        assert await ledger.backfill_deleted_indexes() == 0
        assert (await deleted_index(redis_client, keyspace, config))[chat_id] == indexed_ms
        assert (await ledger.erase_deleted_before(indexed_ms, chats_max=100)).erased == 0
        assert (await ledger.erase_deleted_before(indexed_ms + 1, chats_max=100)).erased == 1
        assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []

    async def test_bounded_passes_resume_and_find_every_chat(
        self,
        redis_client: RedisClient,
        keyspace: Keyspace,
        ledger: Ledger,
        tenants: TenantStore,
        config: ConfigRecord,
    ) -> None:
        """Each pass reads at most `backfill_max` chats and the next resumes where it stopped, even
        through many chats of one score (created in the same microsecond) and chats erased between
        passes; every old deleted chat is found, and the markers end `done`."""
        second = await tenants.create_config(agent_name="Second", company_name="Co")
        olds = [await old_deleted(ledger, redis_client, keyspace, config) for _ in range(7)]
        lives = [(await ledger.create_chat(config, 1000)).chat_id for _ in range(120)]
        olds += [await old_deleted(ledger, redis_client, keyspace, second) for _ in range(3)]
        # Every chat of the first config at one score: the position's `skip` is all that moves.
        index = keyspace.config_chats(config.config_id)
        await redis_client.zadd(index, dict.fromkeys([*olds[:7], *lives], 5))
        cutoff_ms = await now_ms_after_a_tick()
        erased = backfilled = passes = 0
        while await redis_client.get(keyspace.retention_backfill()) != "done":
            done = await ledger.erase_deleted_before(cutoff_ms, chats_max=1000, backfill_max=40)
            erased, backfilled, passes = erased + done.erased, backfilled + done.backfilled, passes + 1
            assert passes < 10
        # 130 chats, 40 a pass: the fourth pass reads the last 10.
        assert (erased, backfilled, passes) == (len(olds), len(olds), 4)
        for chat_id in olds:
            assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []
        for config_id in (config.config_id, second.config_id):
            assert await redis_client.get(keyspace.config_deleted_backfill(config_id)) == "done"

    async def test_the_command_finds_chats_deleted_by_an_older_worker_after_the_backfill(
        self,
        redis_client: RedisClient,
        keyspace: Keyspace,
        ledger: Ledger,
        tenants: TenantStore,
        config: ConfigRecord,
    ) -> None:
        """A worker of the older version still deletes during a rolling upgrade, after the automatic
        backfill is done: the pass does not look again, `backfill_deleted_indexes` (chatledger
        retention backfill) does; and a config's erasure leaves no marker behind."""
        await ledger.erase_deleted_before(0, chats_max=100)
        assert await redis_client.get(keyspace.retention_backfill()) == "done"
        late = await old_deleted(ledger, redis_client, keyspace, config)
        cutoff_ms = await now_ms_after_a_tick()
        assert (await ledger.erase_deleted_before(cutoff_ms, chats_max=100)).erased == 0

        assert await ledger.backfill_deleted_indexes() == 1
        assert await ledger.backfill_deleted_indexes() == 0
        assert (await ledger.erase_deleted_before(cutoff_ms, chats_max=100)).erased == 1
        assert await keys_tagged(redis_client, f"{{c:{late}}}") == []

        await ledger.erase_config(config.config_id)
        assert await keys_tagged(redis_client, f"{{g:{config.config_id}}}") == []


async def commands_processed(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_commands_processed"])


async def pass_commands(redis: Redis, book: Ledger, cutoff_ms: int) -> int:
    """Commands one pass sends (the INFO that reads the count included, the same each time)."""
    before = await commands_processed(redis)
    done = await book.erase_deleted_before(cutoff_ms, chats_max=100)
    assert done.erased == 0
    return await commands_processed(redis) - before


class TestSteadyState:
    async def test_a_backfilled_pass_costs_the_same_whatever_the_chats(
        self, real_redis: Redis, keyspace: Keyspace
    ) -> None:
        """Once backfilled, a pass with nothing due sends the same few commands for 10 chats as for
        1000: the backfill marker, the configs page, each config's deleted index page."""
        book = Ledger(real_redis, keyspace)
        await book.start()
        config = await TenantStore(real_redis, keyspace).create_config(agent_name="A", company_name="Co")
        cutoff_ms = await now_ms_after_a_tick()

        async def add_chats(count: int) -> None:
            for n in range(count):
                chat_id = (await book.create_chat(config, 1000)).chat_id
                if n % 2:
                    await book.delete_chat(config.config_id, chat_id)
                    await real_redis.zrem(keyspace.config_deleted_chats(config.config_id), chat_id)

        await add_chats(10)
        first = await pass_commands(real_redis, book, cutoff_ms)
        small = await pass_commands(real_redis, book, cutoff_ms)
        await add_chats(990)
        assert await book.backfill_deleted_indexes() == 495
        large = await pass_commands(real_redis, book, cutoff_ms)

        assert small == large <= 5
        assert first > small
