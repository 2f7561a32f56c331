"""Whole chats: create, read, top up, delete, restore and list them, and read their journal.

Part of class Ledger (ledger/ledger.py). A chat's balance changes inside its scripts; the config's two
indexes live on another slot and are written around them, ordered so a crash leaves only leftovers
that `list_chats` skips and repairs (design.md sections 3 and 6). The journal is written by the
scripts that move the money (the prelude's `journal`), so its deltas add up to the counters of a chat
that is not moving.
"""

from __future__ import annotations

import time
import uuid
from typing import cast

import msgspec

from ledger.connection import RedisClient, is_cluster
from ledger.errors import ChatNotFound, wrap_redis_errors
from ledger.idempotency import IdempotencyKey
from ledger.keys import Keyspace
from ledger.limits import AMOUNT_MILLI_MAX, LedgerLimits
from ledger.replies import (
    CreateReplayed,
    TopUpReplayed,
    decode_create_chat,
    decode_delete_chat,
    decode_inspect_chat,
    decode_restore_chat,
    decode_top_up,
)
from ledger.results import ChatPage, ChatState, ConfigRecord, JournalEntry, Reconciliation
from ledger.scripts import Scripts


class Chats:
    """Ledger's methods on whole chats. Ledger.__init__ sets the attributes declared here."""

    redis: RedisClient
    keys: Keyspace
    limits: LedgerLimits
    scripts: Scripts

    @wrap_redis_errors
    async def create_chat(
        self, config: ConfigRecord, limit_milli: int, *, idempotency: IdempotencyKey | None = None
    ) -> ChatState:
        """Create a chat owned by `config`, in one round trip (two on a cluster).

        With an Idempotency-Key the chat id is derived from the key, and the same request again answers
        the chat as it was created (IdempotencyKeyReused for another request under the key)."""
        chat_id = idempotency.chat_id_for(config.config_id) if idempotency else str(uuid.uuid4())
        # The index is scored in microseconds so chats created in one millisecond still list in
        # creation order (1.8e15 us is exact in a double score).
        created_us = time.time_ns() // 1000
        reply = await self._index_then_create(config, chat_id, limit_milli, created_us, idempotency)
        created = decode_create_chat(reply)
        if isinstance(created, CreateReplayed):
            return await self._as_created(config.config_id, chat_id, created)
        return ChatState(
            chat_id=chat_id,
            config_id=config.config_id,
            created_ms=created_us // 1000,
            agent_name=config.agent_name,
            company_name=config.company_name,
            limit_milli=limit_milli,
            used_milli=0,
            reserved_milli=0,
            deleted=False,
            deleted_ms=0,
        )

    async def _index_then_create(
        self,
        config: ConfigRecord,
        chat_id: str,
        limit_milli: int,
        created_us: int,
        idempotency: IdempotencyKey | None,
    ) -> object:
        """The index entries, then create_chat.lua, in one pipeline: a crash leaves at most an index
        entry without a chat, which listings skip and repair (design.md section 3). Its reply."""
        config_id = config.config_id
        async with self.redis.pipeline(transaction=False) as pipe:
            # NX: a replayed creation must not move its chat in the listing.
            _ = pipe.zadd(self.keys.config_chats(config_id), {chat_id: created_us}, nx=True)
            _ = pipe.zadd(self.keys.config_live_chats(config_id), {chat_id: created_us}, nx=True)
            # A cluster pipeline refuses scripts, and sends each node's commands concurrently so it could
            # not keep "index first" anyway: on a cluster the index goes first, then the script alone.
            on_cluster = is_cluster(self.redis)
            if on_cluster:
                await pipe.execute()
            script_reply = await self.scripts.create_chat(
                keys=[self.keys.chat_meta(chat_id), self.keys.chat_journal(chat_id)],
                args=[
                    config_id,
                    limit_milli,
                    created_us // 1000,
                    config.agent_name,
                    config.company_name,
                    idempotency.fingerprint if idempotency else "",
                ],
                # redis-py's hint omits pipelines, which AsyncScript.__call__ supports (it queues the
                # script's SCRIPT LOAD with the pipeline).
                client=None if on_cluster else pipe,  # type: ignore[arg-type]
            )
            if on_cluster:
                return script_reply
            *_, reply = await pipe.execute()
            return reply

    async def _as_created(self, config_id: str, chat_id: str, replayed: CreateReplayed) -> ChatState:
        """A replayed creation answers the chat as it was created, whatever happened to it since."""
        original = _chat_from_fields(chat_id, replayed.fields)
        if original.deleted:
            # The replay's NX re-added a deleted chat to the live index: take it out again.
            await self.redis.zrem(self.keys.config_live_chats(config_id), chat_id)
        fields = _as_dict(replayed.fields)
        return msgspec.structs.replace(
            original, limit_milli=int(fields["limit0"]), used_milli=0, reserved_milli=0, deleted=False,
            deleted_ms=0, expired=0, clamped_milli=0,
        )  # fmt: skip

    @wrap_redis_errors
    async def get_chat(self, config_id: str | None, chat_id: str) -> ChatState:
        """The chat, deleted or not. `config_id=None` reads any config's chat (the admin surface)."""
        # The client decodes responses, so every key and value is a str.
        fields = cast(dict[str, str], await self.redis.hgetall(self.keys.chat_meta(chat_id)))
        if not fields or (config_id is not None and fields["config"] != config_id):
            raise ChatNotFound()
        return chat_from_hash(chat_id, fields)

    @wrap_redis_errors
    async def inspect_chat(self, chat_id: str) -> ChatState:
        """Any config's chat as the admin surface shows it: holds past their deadline are expired
        first, in the same script, so `reserved_milli` never counts a dead worker's hold."""
        keys = self.keys
        reply = await self.scripts.call(
            "inspect_chat",
            keys=[
                keys.chat_meta(chat_id),
                keys.chat_deadlines(chat_id),
                keys.chat_reservations(chat_id),
                keys.chat_journal(chat_id),
            ],
            args=[self.limits.reservation_retention_ms],
        )
        return _chat_from_fields(chat_id, decode_inspect_chat(reply).fields)

    @wrap_redis_errors
    async def top_up(
        self, config_id: str, chat_id: str, add_milli: int, *, idempotency: IdempotencyKey | None = None
    ) -> ChatState:
        """Add to the chat's limit. With an Idempotency-Key, the same request again adds nothing and
        answers the balance the first one answered."""
        keys = [self.keys.chat_meta(chat_id), self.keys.chat_journal(chat_id)]
        args: list[str | int] = [config_id, add_milli, AMOUNT_MILLI_MAX]
        if idempotency:
            keys += [
                self.keys.chat_idempotency(chat_id, idempotency.digest),
                self.keys.chat_idempotency_index(chat_id),
            ]
            args += [idempotency.fingerprint, self.limits.idempotency_ttl_ms]
        topped = decode_top_up(await self.scripts.call("top_up", keys=keys, args=args))
        now = _chat_from_fields(chat_id, topped.fields)
        if isinstance(topped, TopUpReplayed):
            return msgspec.structs.replace(
                now, limit_milli=topped.limit_milli, used_milli=topped.used_milli, deleted=False, deleted_ms=0
            )
        return now

    @wrap_redis_errors
    async def delete_chat(self, config_id: str, chat_id: str) -> ChatState:
        """Soft delete, then drop the chat from the config's live index (a separate slot). A crash in
        between leaves a deleted chat in the live index, which `list_chats` notices and repairs."""
        reply = await self.scripts.call("delete_chat", keys=[self.keys.chat_meta(chat_id)], args=[config_id])
        chat = _chat_from_fields(chat_id, decode_delete_chat(reply).fields)
        # The deleted index is what the retention pass reads; a crash before it leaves a deleted chat
        # the pass does not see, which a config's erasure still finds in the all-chats index.
        async with self.redis.pipeline(transaction=False) as pipe:
            _ = pipe.zrem(self.keys.config_live_chats(config_id), chat_id)
            _ = pipe.zadd(self.keys.config_deleted_chats(config_id), {chat_id: chat.deleted_ms})
            await pipe.execute()
        return chat

    @wrap_redis_errors
    async def restore_chat(self, chat_id: str) -> ChatState:
        """Undo a soft delete of any config's chat (the admin surface), and list it again. The live index
        entry gets the chat's original score from the all-chats index, so it lists where it was."""
        reply = await self.scripts.call("restore_chat", keys=[self.keys.chat_meta(chat_id)])
        chat = _chat_from_fields(chat_id, decode_restore_chat(reply).fields)
        score = await self.redis.zscore(self.keys.config_chats(chat.config_id), chat_id)
        await self.redis.zadd(
            self.keys.config_live_chats(chat.config_id),
            {chat_id: score if score is not None else chat.created_ms * 1000},
        )
        await self.redis.zrem(self.keys.config_deleted_chats(chat.config_id), chat_id)
        return chat

    @wrap_redis_errors
    async def list_chats(
        self, config_id: str, *, offset: int, limit: int, include_deleted: bool = False
    ) -> ChatPage:
        """A page of the config's chats, oldest first. Two round trips: the index page and its total,
        then the pages' meta hashes. Leftovers of a crash (an index entry whose chat is missing or
        deleted) are repaired here and the page is read again."""
        keys = self.keys
        index = keys.config_chats(config_id) if include_deleted else keys.config_live_chats(config_id)
        for _attempt in range(3):
            page, repaired = await self._read_chat_page(index, offset, limit, include_deleted)
            if not repaired:
                return page
        return page

    async def _read_chat_page(
        self, index: str, offset: int, limit: int, include_deleted: bool
    ) -> tuple[ChatPage, bool]:
        async with self.redis.pipeline(transaction=False) as pipe:
            _ = pipe.zrange(index, offset, offset + limit - 1, withscores=True)
            _ = pipe.zcard(index)
            ids_with_scores, total = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for chat_id, _score in ids_with_scores:
                _ = pipe.hgetall(self.keys.chat_meta(chat_id))
            metas: list[dict[str, str]] = await pipe.execute() if ids_with_scores else []
        now_us = time.time_ns() // 1000
        items: list[ChatState] = []
        stale: list[str] = []
        for (chat_id, score), fields in zip(ids_with_scores, metas, strict=True):
            if not fields:
                if now_us - score > self.limits.orphan_grace_ms * 1000:
                    stale.append(chat_id)
                continue
            chat = chat_from_hash(chat_id, fields)
            if chat.deleted and not include_deleted:
                stale.append(chat_id)
                continue
            items.append(chat)
        if stale:
            await self.redis.zrem(index, *stale)
        return ChatPage(items=items, total=int(total)), bool(stale)

    # --- the journal: one entry per balance move -------------------------------------------------------
    @wrap_redis_errors
    async def read_journal(
        self, chat_id: str, *, after: str | None = None, count: int = 100
    ) -> list[JournalEntry]:
        """Journal entries oldest first, after the raw entry id `after` (exclusive) when given. From
        the start, a journal whose old entries were folded begins with their checkpoint (op
        `checkpoint`, id of the newest folded entry, deltas their sums: design.md section 12)."""
        checkpoint = None if after else (await self._checkpoint(chat_id))[0]
        start = f"({after}" if after else "-"
        raw = await self.redis.xrange(
            self.keys.chat_journal(chat_id), min=start, max="+", count=count - (checkpoint is not None)
        )
        # The client decodes responses: ids and fields are str.
        entries = [_journal_entry(entry_id, fields) for entry_id, fields in cast(_Entries, raw)]
        return [checkpoint, *entries] if checkpoint else entries

    async def _checkpoint(self, chat_id: str) -> tuple[JournalEntry | None, int, int]:
        """The journal's checkpoint (None before the first fold), the entries it folded and how many of
        them were expiries."""
        names = ("jto", "jdu", "jdr", "jdl", "jsf", "jn", "jex")
        values = await self.redis.hmget(self.keys.chat_meta(chat_id), list(names))
        if values[0] is None:
            return None, 0, 0
        entry_id, *sums = cast(list[str], values)
        fields = {"op": "checkpoint", "rid": "", **dict(zip(("du", "dr", "dl", "sf"), sums[:4], strict=True))}
        return _journal_entry(entry_id, fields), int(sums[4]), int(sums[5])

    @wrap_redis_errors
    async def reconcile(self, chat_id: str) -> Reconciliation:
        """Add up the checkpoint and the journal after it and compare them with the chat's counters.
        Reads in pages, so it is O(entries) in time but not in memory; the checkpoint is read again
        after the journal, and the whole read again if a fold moved it meanwhile. The counters are read
        last, so a chat that is moving may not reconcile until it is still. Holds past their deadline
        are expired first (inspect_chat), so neither side counts them as reserved."""
        await self.inspect_chat(chat_id)
        while True:
            checkpoint, folded, expired = await self._checkpoint(chat_id)
            used = reserved = limit = clamped = 0
            if checkpoint is not None:
                used, reserved = checkpoint.used_delta_milli, checkpoint.reserved_delta_milli
                limit, clamped = checkpoint.limit_delta_milli, checkpoint.clamped_milli
            entries = folded
            after = checkpoint.entry_id if checkpoint else None
            while batch := await self.read_journal(chat_id, after=after or "0-0", count=1000):
                for entry in batch:
                    used += entry.used_delta_milli
                    reserved += entry.reserved_delta_milli
                    limit += entry.limit_delta_milli
                    clamped += entry.clamped_milli
                    expired += entry.op == "expire"
                entries += len(batch)
                after = batch[-1].entry_id
            if (await self._checkpoint(chat_id))[0] == checkpoint:
                break
        return Reconciliation(
            chat=await self.get_chat(None, chat_id),
            entries=entries,
            used_sum_milli=used,
            reserved_sum_milli=reserved,
            limit_sum_milli=limit,
            expired=expired,
            clamped_milli=clamped,
        )


_Entries = list[tuple[str, dict[str, str]]]


def chat_from_hash(chat_id: str, fields: dict[str, str]) -> ChatState:
    """A ChatState from the chat's meta hash."""
    return ChatState(
        chat_id=chat_id,
        config_id=fields["config"],
        created_ms=int(fields["created"]),
        agent_name=fields["agent"],
        company_name=fields["company"],
        limit_milli=int(fields["limit"]),
        used_milli=int(fields["used"]),
        reserved_milli=int(fields["reserved"]),
        deleted=fields["deleted"] == "1",
        deleted_ms=int(fields["deleted_at"]),
        expired=int(fields.get("expired", 0)),
        clamped_milli=int(fields.get("clamped", 0)),
    )


def _as_dict(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _chat_from_fields(chat_id: str, flat: list[str]) -> ChatState:
    """A ChatState from a script's HGETALL of the meta hash: fields and values in turn."""
    return chat_from_hash(chat_id, _as_dict(flat))


def _journal_entry(entry_id: str, fields: dict[str, str]) -> JournalEntry:
    return JournalEntry(
        entry_id=entry_id,
        op=fields["op"],
        reservation_id=fields["rid"],
        used_delta_milli=int(fields["du"]),
        reserved_delta_milli=int(fields["dr"]),
        limit_delta_milli=int(fields["dl"]),
        # Stored as 'sf' since the journal began, when a charge past the hold was a shortfall.
        clamped_milli=int(fields["sf"]),
        timestamp_ms=int(entry_id.split("-")[0]),
    )
