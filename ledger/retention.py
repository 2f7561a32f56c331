"""Retention of deleted chats: a soft-deleted chat is erased for good once it has been deleted longer
than the operator's setting (design.md section 12).

Part of class Ledger (ledger/ledger.py). A pass walks the configs (SSCAN, a page at a time, carrying its
cursor over to the next pass) and, for each, the oldest entries of its deleted index up to the cutoff,
erasing each chat with erase_chat.lua, which checks again on the chat's slot that it is still deleted
and was deleted before the cutoff (a chat restored meanwhile is kept). Every command is small (a page
of an index, one chat's script), so Redis is never busy for long with a pass; a pass stops after
`chats_max` erasures and the next one continues.
"""

from __future__ import annotations

from typing import cast

import msgspec

from ledger.erasure import Erasure
from ledger.errors import wrap_redis_errors
from ledger.limits import CHATS_BATCH


class RetentionPass(msgspec.Struct, frozen=True):
    """What one pass did: the chats it erased, and the configs cursor the next pass starts from (0: the
    walk over every config is complete, and the next pass starts it again)."""

    erased: int
    cursor: int


class Retention(Erasure):
    """Ledger's retention pass, on Erasure's erasing (ledger/erasure.py)."""

    @wrap_redis_errors
    async def erase_deleted_before(self, cutoff_ms: int, *, chats_max: int, cursor: int = 0) -> RetentionPass:
        """Erase chats soft-deleted before `cutoff_ms` (epoch ms), at most about `chats_max`, walking the
        configs from `cursor`."""
        erased = 0
        while True:
            cursor, config_ids = await self._configs_page(cursor)
            for config_id in config_ids:
                erased += await self._erase_deleted_of(config_id, cutoff_ms, chats_max - erased)
                if erased >= chats_max:
                    # This config may have more: the next pass starts from its page again.
                    return RetentionPass(erased=erased, cursor=cursor)
            if cursor == 0:
                return RetentionPass(erased=erased, cursor=0)

    @wrap_redis_errors
    async def retention_turn(self, holder: str, ttl_ms: int) -> bool:
        """Whether `holder` may run the pass now: one worker at a time, for `ttl_ms` at most (a worker
        that dies holding the turn loses it then)."""
        return bool(await self.redis.set(self.keys.retention_turn(), holder, nx=True, px=ttl_ms))

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
