"""Retention of deleted chats: a soft-deleted chat is erased for good once it has been deleted longer
than the operator's setting (design.md section 12).

Part of class Ledger (ledger/ledger.py). A pass walks the configs (SSCAN, a page at a time, carrying its
cursor over to the next pass) and, for each, the oldest entries of its deleted index up to the cutoff,
erasing each chat with erase_chat.lua, which checks again on the chat's slot that it is still deleted
and was deleted before the cutoff (a chat restored meanwhile is kept). Every command is small (a page
of an index, one chat's script), so Redis is never busy for long with a pass; a pass stops after
`chats_max` erasures and the next one continues.

Chats soft-deleted before the deleted index existed are not in it. Until it has seen every config, a
pass first backfills: it reads each config's all-chats index a page at a time (at most `backfill_max`
chats a pass, resuming where the last stopped), reads those chats' deleted flag and time, and adds the
deleted ones missing from the deleted index (ZADD NX, so a newer score written by a delete is kept).
Once every config is done a global marker says so, and a pass reads that one key and nothing more.
"""

from __future__ import annotations

import time
from typing import cast

import msgspec

from ledger.erasure import Erasure
from ledger.errors import wrap_redis_errors
from ledger.limits import CHATS_BATCH

# Chats of the all-chats indexes one pass reads at most while it backfills the deleted indexes: 100
# pages of 100, three small commands a page.
BACKFILL_CHATS_MAX = 10_000
# The value of a backfill marker (a config's, or the global one) once its backfill is complete.
_DONE = "done"


class RetentionPass(msgspec.Struct, frozen=True):
    """What one pass did: the chats it erased, the configs cursor the next pass starts from (0: the
    walk over every config is complete, and the next pass starts it again), and the deleted chats its
    backfill found missing from their config's deleted index and added."""

    erased: int
    cursor: int
    backfilled: int = 0


class Retention(Erasure):
    """Ledger's retention pass, on Erasure's erasing (ledger/erasure.py)."""

    @wrap_redis_errors
    async def erase_deleted_before(
        self, cutoff_ms: int, *, chats_max: int, cursor: int = 0, backfill_max: int = BACKFILL_CHATS_MAX
    ) -> RetentionPass:
        """Erase chats soft-deleted before `cutoff_ms` (epoch ms), at most about `chats_max`, walking the
        configs from `cursor`; first, until it is complete, read up to `backfill_max` chats of the
        backfill of the deleted indexes."""
        backfilled = await self._backfill_step(backfill_max) if backfill_max > 0 else 0
        erased = 0
        while True:
            cursor, config_ids = await self._configs_page(cursor)
            for config_id in config_ids:
                erased += await self._erase_deleted_of(config_id, cutoff_ms, chats_max - erased)
                if erased >= chats_max:
                    # This config may have more: the next pass starts from its page again.
                    return RetentionPass(erased=erased, cursor=cursor, backfilled=backfilled)
            if cursor == 0:
                return RetentionPass(erased=erased, cursor=0, backfilled=backfilled)

    @wrap_redis_errors
    async def backfill_deleted_indexes(self) -> int:
        """Read every config's chats now, whatever the markers say, and add the deleted ones missing
        from their deleted index; returns how many were added. The operator's command for chats deleted
        by a worker of an older version after the automatic backfill had passed their config (a rolling
        upgrade). Each command is one page; the whole takes time in proportion to the chats."""
        indexed, cursor = 0, 0
        while True:
            cursor, config_ids = await self._configs_page(cursor)
            for config_id in config_ids:
                indexed += (await self._backfill_config(config_id, None, budget=None))[1]
            if cursor == 0:
                await self.redis.set(self.keys.retention_backfill(), _DONE)
                return indexed

    @wrap_redis_errors
    async def retention_turn(self, holder: str, ttl_ms: int) -> bool:
        """Whether `holder` may run the pass now: one worker at a time, for `ttl_ms` at most (a worker
        that dies holding the turn loses it then)."""
        return bool(await self.redis.set(self.keys.retention_turn(), holder, nx=True, px=ttl_ms))

    async def _backfill_step(self, budget: int) -> int:
        """Backfill the deleted indexes, reading at most `budget` chats, from where the last pass left
        it; returns the chats added. Once done, one GET."""
        marker = self.keys.retention_backfill()
        state = cast(str | None, await self.redis.get(marker))
        if state == _DONE:
            return 0
        cursor = int(state or 0)
        read = indexed = 0
        while True:
            next_cursor, config_ids = await self._configs_page(cursor)
            for config_id, position in zip(
                config_ids, await self._backfill_positions(config_ids), strict=True
            ):
                if position == _DONE:
                    continue
                config_read, config_indexed = await self._backfill_config(config_id, position, budget - read)
                read, indexed = read + config_read, indexed + config_indexed
                if read >= budget:
                    # This page again next time: its configs that are done cost a GET each.
                    await self.redis.set(marker, str(cursor))
                    return indexed
            if next_cursor == 0:
                await self.redis.set(marker, _DONE)
                return indexed
            cursor = next_cursor

    async def _backfill_positions(self, config_ids: list[str]) -> list[str | None]:
        if not config_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for config_id in config_ids:
                _ = pipe.get(self.keys.config_deleted_backfill(config_id))
            return cast(list[str | None], await pipe.execute())

    async def _backfill_config(
        self, config_id: str, position: str | None, budget: int | None
    ) -> tuple[int, int]:
        """Read the config's all-chats index after `position` (None: from the start), at most `budget`
        chats (None: all), and add its deleted chats missing from the deleted index. Marks the config
        done at the end of the index, or saves the position. Returns (chats read, chats added).

        The position is the last chat read and its score ('<score> <chat id>'), not a rank: chats
        erased meanwhile shift the ranks, and would make a rank skip unread chats."""
        index = self.keys.config_chats(config_id)
        marker = self.keys.config_deleted_backfill(config_id)
        after = None if position is None else _parse_position(position)
        read = indexed = 0
        while budget is None or read < budget:
            page = await self._backfill_page(index, after, CHATS_BATCH if budget is None else budget - read)
            if not page:
                await self.redis.set(marker, _DONE)
                return read, indexed
            indexed += await self._index_deleted(config_id, [chat_id for chat_id, _score in page])
            read += len(page)
            after = page[-1][1], page[-1][0]
        assert after is not None  # the loop ran: budget > 0
        await self.redis.set(marker, f"{after[0]!r} {after[1]}")
        return read, indexed

    async def _backfill_page(
        self, index: str, after: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to `count` (at most a page) entries of the index after `after` (score, chat id) in its
        order (score, then id). Chats of the same score as `after` come first, those up to it are
        dropped; a page of nothing but those (chats created in the same microsecond) reads the next."""
        num = min(CHATS_BATCH, count)
        low = "-inf" if after is None else repr(after[0])
        offset = 0
        while True:
            raw = cast(
                list[tuple[str, float]],
                await self.redis.zrangebyscore(index, low, "+inf", start=offset, num=num, withscores=True),
            )
            page = raw if after is None else [(c, score) for c, score in raw if (score, c) > after]
            if page or len(raw) < num:
                return page
            offset += num

    async def _index_deleted(self, config_id: str, chat_ids: list[str]) -> int:
        """Add the chats among `chat_ids` that are deleted to the config's deleted index, unless they
        are in it; returns how many were added. A chat's score is its own deletion time; a deleted chat
        without one (never written so by this code) scores now, so its retention starts now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for chat_id in chat_ids:
                _ = pipe.hmget(self.keys.chat_meta(chat_id), ["config", "deleted", "deleted_at"])
            metas = cast(list[list[str | None]], await pipe.execute())
        now_ms = int(time.time() * 1000)
        deleted: dict[str, int] = {}
        for chat_id, (owner, flag, deleted_ms) in zip(chat_ids, metas, strict=True):
            # A chat erased meanwhile has no meta; one of another config is not this index's.
            if owner == config_id and flag == "1":
                deleted[chat_id] = int(deleted_ms or 0) or now_ms
        if not deleted:
            return 0
        # NX: an entry already there is the delete's own (or a newer delete's), and stays as it is. A
        # chat restored between the read and this write gets a stale entry, which erase_chat.lua
        # refuses and `_reindex` drops.
        return cast(int, await self.redis.zadd(self.keys.config_deleted_chats(config_id), deleted, nx=True))

    async def _configs_page(self, cursor: int) -> tuple[int, list[str]]:
        next_cursor, members = await self.redis.sscan(self.keys.configs(), cursor, count=CHATS_BATCH)
        return int(next_cursor), sorted(cast(list[str], members))

    async def _erase_deleted_of(self, config_id: str, cutoff_ms: int, budget: int) -> int:
        """Erase the config's chats deleted before the cutoff, oldest first, up to `budget`."""
        index = self.keys.config_deleted_chats(config_id)
        erased = 0
        while erased < budget:
            due = cast(
                list[str],
                await self.redis.zrangebyscore(
                    index, "-inf", f"({cutoff_ms}", start=0, num=min(CHATS_BATCH, budget - erased)
                ),
            )
            if not due:
                return erased
            for chat_id in due:
                result = await self._erase_keys(chat_id, config_id, deleted_before_ms=cutoff_ms)
                if result is None:
                    await self._reindex(index, chat_id)
                erased += result is not None and bool(result.existed)
        return erased

    async def _reindex(self, index: str, chat_id: str) -> None:
        """A chat the script kept: restored (its index entry outlived a crash), or deleted again later
        than the index says. Its entry is made true, so the pass does not find it again."""
        deleted, deleted_ms = await self.redis.hmget(self.keys.chat_meta(chat_id), ["deleted", "deleted_at"])
        if deleted == "1" and deleted_ms is not None:
            await self.redis.zadd(index, {chat_id: int(deleted_ms)})
        else:
            await self.redis.zrem(index, chat_id)


def _parse_position(position: str) -> tuple[float, str]:
    score, chat_id = position.split(" ")
    return float(score), chat_id
