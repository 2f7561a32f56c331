"""Erasure: remove a chat, or every chat of a config, for good (design.md section 12).

Part of class Ledger (ledger/ledger.py). A chat's keys go in erase_chat.lua, on the chat's slot; the
config's index entries live on the config's slot and go afterwards, in a separate command. A crash in
between leaves an index entry without a chat, which listings, exports and a second erasure skip and
remove, so every step is safe to run again. A config is erased a batch of chats at a time, each batch
read again from the index, so an erasure interrupted anywhere resumes by being run again.
"""

from __future__ import annotations

import asyncio
from typing import cast

from ledger.connection import RedisClient
from ledger.errors import ChatNotFound, wrap_redis_errors
from ledger.keys import Keyspace
from ledger.limits import CHATS_BATCH
from ledger.replies import Erased, decode_erase_chat
from ledger.scripts import Scripts
from ledger.tenants import TenantStore


class Erasure:
    """Ledger's erasing methods. Ledger.__init__ sets the attributes declared here."""

    redis: RedisClient
    keys: Keyspace
    scripts: Scripts

    @wrap_redis_errors
    async def erase_chat(self, chat_id: str, *, config_id: str | None = None) -> str:
        """Erase one chat (of `config_id`, or of any config when None), deleted or not: its history,
        journal, hold records, idempotency records and its config's index entries. Returns the config
        it belonged to; ChatNotFound when nothing of it was left, after removing any leftover."""
        erased = await self._erase_keys(chat_id, config_id or "", deleted_before_ms=0)
        if erased is None or not erased.existed:
            raise ChatNotFound()
        return erased.config_id

    async def _erase_keys(self, chat_id: str, config_id: str, *, deleted_before_ms: int) -> Erased | None:
        """erase_chat.lua until no record is left, then the config's index entries; None when the chat
        was kept (retention: not deleted, or not long enough) or belongs to another config."""
        keys = [*self.keys.chat_keys(chat_id), self.keys.chat_idempotency_index(chat_id)]
        first: Erased | None = None
        while True:
            try:
                reply = decode_erase_chat(
                    await self.scripts.call("erase_chat", keys=keys, args=[config_id, deleted_before_ms])
                )
            except ChatNotFound:  # a chat of another config: not this caller's to erase
                return None
            if not isinstance(reply, Erased):
                return None
            first = first or reply
            if not reply.more:
                break
        owner = first.config_id or config_id
        if owner:
            await self._drop_from_indexes(owner, [chat_id])
        return first

    async def _drop_from_indexes(self, config_id: str, chat_ids: list[str]) -> None:
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for index in (
                keys.config_chats(config_id),
                keys.config_live_chats(config_id),
                keys.config_deleted_chats(config_id),
            ):
                _ = pipe.zrem(index, *chat_ids)
            await pipe.execute()

    @wrap_redis_errors
    async def erase_config(self, config_id: str) -> int:
        """Erase a config and every chat of it, a batch at a time; returns the chats erased by this call.

        The config and its keys go first, so no new chat can join it while its chats are erased;
        then each batch of the all-chats index (and of the two others, should they hold a stray id) is
        erased and dropped from the indexes; the indexes go last, then the retention backfill's marker.
        Run again after a crash, it resumes where the indexes say. Whether there was a config to erase
        is `config_exists`, asked before."""
        await TenantStore(self.redis, self.keys).delete_config(config_id)
        erased = 0
        for index in (
            self.keys.config_chats(config_id),
            self.keys.config_live_chats(config_id),
            self.keys.config_deleted_chats(config_id),
        ):
            while batch := cast(list[str], await self.redis.zrange(index, 0, CHATS_BATCH - 1)):
                results = await asyncio.gather(
                    *(self._erase_keys(chat_id, config_id, deleted_before_ms=0) for chat_id in batch)
                )
                erased += sum(1 for result in results if result is not None and result.existed)
                # A chat of another config (never written so, but an index is not trusted) is only
                # dropped from this config's indexes.
                await self._drop_from_indexes(config_id, batch)
        # The retention backfill's marker of the config (ledger/retention.py): nothing of it is left.
        await self.redis.delete(self.keys.config_deleted_backfill(config_id))
        return erased

    @wrap_redis_errors
    async def config_exists(self, config_id: str) -> bool:
        """Whether anything of the config is left: its record, or an index of its chats (an erasure
        that was interrupted)."""
        keys = self.keys
        return bool(
            await self.redis.exists(keys.config_record(config_id))
            or await self.redis.exists(keys.config_chats(config_id))
            or await self.redis.exists(keys.config_live_chats(config_id))
            or await self.redis.exists(keys.config_deleted_chats(config_id))
        )
