"""class Ledger: one async method per business operation on chats (design.md sections 2-6).

Each method is one Redis round trip unless its docstring says otherwise; every balance change happens
inside a Lua script, so concurrent workers never race on a read-modify-write.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import cast

import msgspec
import redis.exceptions
from redis.asyncio import RedisCluster

from ledger.connection import RedisClient, is_cluster
from ledger.context import ContextCache
from ledger.errors import (
    ChatDeleted,
    ChatNotDeleted,
    ChatNotFound,
    DuplicateInFlight,
    ExchangeReplayed,
    IdempotencyKeyReused,
    InsufficientTokens,
    LimitTooLarge,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationError,
    ReservationExpired,
    ReservationNotFound,
    store_failure,
    wrap_redis_errors,
)
from ledger.history import HistoryQuery, decode_entries, decode_entry, make_message
from ledger.idempotency import IdempotencyKey
from ledger.keys import Keyspace
from ledger.limits import AMOUNT_MILLI_MAX, LedgerLimits
from ledger.multiplex import Command
from ledger.packing import pack_counts, pack_numbers
from ledger.results import (
    ChatPage,
    ChatState,
    ConfigRecord,
    HistoryPage,
    JournalEntry,
    Reconciliation,
    Reservation,
    Settlement,
    StoredMessage,
)
from ledger.scripts import Scripts

_RESERVATION_ERRORS: dict[str, type[ReservationError]] = {
    "reservation_not_found": ReservationNotFound,
    "reservation_already_settled": ReservationAlreadySettled,
    "reservation_already_voided": ReservationAlreadyVoided,
    "reservation_expired": ReservationExpired,
}


def _raise_status(status: str) -> None:
    """Raise the ledger error a script's non-ok status names."""
    if status == "not_found":
        raise ChatNotFound()
    if status == "deleted":
        raise ChatDeleted()
    if status == "in_flight":
        raise DuplicateInFlight()
    if status == "key_reused":
        raise IdempotencyKeyReused()
    if status in _RESERVATION_ERRORS:
        raise _RESERVATION_ERRORS[status]()
    raise AssertionError(f"unexpected script status {status!r}")


def _chat_from_hash(chat_id: str, fields: dict[str, str]) -> ChatState:
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


def _chat_from_reply(chat_id: str, reply: list[str]) -> ChatState:
    """A ChatState from a script reply `['ok', field, value, ...]`."""
    flat = reply[1:]
    return _chat_from_hash(chat_id, dict(zip(flat[::2], flat[1::2], strict=True)))


class Ledger:
    """The chat ledger on one Redis client. Construct once per process; `start()` before use."""

    def __init__(self, redis: RedisClient, keys: Keyspace, limits: LedgerLimits | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits or LedgerLimits()
        self.scripts = Scripts(redis)
        # Chats' newest messages, so a reserve reads only the new ones (with a multiplexer only).
        self.contexts = ContextCache()

    @wrap_redis_errors
    async def start(self) -> None:
        """Load every script now, so a broken script or an unreachable Redis fails the boot."""
        await self.scripts.load_all()

    @wrap_redis_errors
    async def ready(self) -> bool:
        """Redis answers and holds every script; a Redis restarted empty is made ready again here, since
        loading the scripts is what a first request would do anyway.

        On a cluster it only asks one node: with one primary down, the chats on the others still work,
        and calling every worker unready would let the load balancer turn a partial outage into a full
        one. A node that lost its scripts gets them back at the first call (NOSCRIPT -> SCRIPT LOAD)."""
        if isinstance(self.redis, RedisCluster):
            return await self._any_primary_answers(self.redis)
        if not await self.scripts.loaded():
            await self.scripts.load_all()
        return True

    @staticmethod
    async def _any_primary_answers(cluster: RedisCluster) -> bool:
        failure: Exception | None = None
        for node in cluster.get_primaries():
            try:
                return bool(await cluster.ping(target_nodes=node))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                failure = exc
        raise failure or redis.exceptions.ConnectionError("the cluster has no primaries")

    # --- chats ---------------------------------------------------------------------------------------
    @wrap_redis_errors
    async def create_chat(
        self, config: ConfigRecord, limit_milli: int, *, idempotency: IdempotencyKey | None = None
    ) -> ChatState:
        """Create a chat owned by `config`. One round trip: the index entries and the script are sent in
        one pipeline, index first, so a crash leaves at most an index entry without a chat, which
        listings skip and repair (design.md section 3).

        With an Idempotency-Key the chat id is derived from the key, and the same request again answers
        the chat as it was created (IdempotencyKeyReused for another request under the key)."""
        chat_id = idempotency.chat_id_for(config.config_id) if idempotency else str(uuid.uuid4())
        # The index is scored in microseconds so chats created in one millisecond still list in
        # creation order (1.8e15 us is exact in a double score).
        created_us = time.time_ns() // 1000
        created_ms = created_us // 1000
        live_index = self.keys.config_live_chats(config.config_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            # NX: a replayed creation must not move its chat in the listing.
            _ = pipe.zadd(self.keys.config_chats(config.config_id), {chat_id: created_us}, nx=True)
            _ = pipe.zadd(live_index, {chat_id: created_us}, nx=True)
            # A cluster pipeline refuses scripts, and sends each node's commands concurrently so it could
            # not keep "index first" anyway: on a cluster the index goes first, then the script alone.
            on_cluster = is_cluster(self.redis)
            if on_cluster:
                await pipe.execute()
            script_reply = await self.scripts.create_chat(
                keys=[self.keys.chat_meta(chat_id), self.keys.chat_journal(chat_id)],
                args=[
                    config.config_id,
                    limit_milli,
                    created_ms,
                    config.agent_name,
                    config.company_name,
                    idempotency.fingerprint if idempotency else "",
                ],
                # redis-py's hint omits pipelines, which AsyncScript.__call__ supports (it queues the
                # script's SCRIPT LOAD with the pipeline).
                client=None if on_cluster else pipe,  # type: ignore[arg-type]
            )
            *_, reply = [script_reply] if on_cluster else await pipe.execute()
        if reply[0] == "replay":
            original = _chat_from_reply(chat_id, reply)
            if original.deleted:
                # The replay's NX re-added a deleted chat to the live index: take it out again.
                await self.redis.zrem(live_index, chat_id)
            fields = dict(zip(reply[1::2], reply[2::2], strict=True))
            return msgspec.structs.replace(
                original, limit_milli=int(fields["limit0"]), used_milli=0, reserved_milli=0, deleted=False,
                deleted_ms=0, expired=0, clamped_milli=0,
            )  # fmt: skip
        if reply[0] != "ok":
            _raise_status(reply[0])
        return ChatState(
            chat_id=chat_id,
            config_id=config.config_id,
            created_ms=created_ms,
            agent_name=config.agent_name,
            company_name=config.company_name,
            limit_milli=limit_milli,
            used_milli=0,
            reserved_milli=0,
            deleted=False,
            deleted_ms=0,
        )

    @wrap_redis_errors
    async def get_chat(self, config_id: str | None, chat_id: str) -> ChatState:
        """The chat, deleted or not. `config_id=None` reads any config's chat (the admin surface)."""
        # The client decodes responses, so every key and value is a str.
        fields = cast(dict[str, str], await self.redis.hgetall(self.keys.chat_meta(chat_id)))
        if not fields or (config_id is not None and fields["config"] != config_id):
            raise ChatNotFound()
        return _chat_from_hash(chat_id, fields)

    @wrap_redis_errors
    async def top_up(
        self, config_id: str, chat_id: str, add_milli: int, *, idempotency: IdempotencyKey | None = None
    ) -> ChatState:
        """Add to the chat's limit. With an Idempotency-Key, the same request again adds nothing and
        answers the balance the first one answered."""
        keys = [self.keys.chat_meta(chat_id), self.keys.chat_journal(chat_id)]
        args: list[str | int] = [config_id, add_milli, AMOUNT_MILLI_MAX]
        if idempotency:
            keys.append(self.keys.chat_idempotency(chat_id, idempotency.digest))
            args += [idempotency.fingerprint, self.limits.idempotency_ttl_ms]
        reply = await self.scripts.call("top_up", keys=keys, args=args)
        if reply[0] == "limit_too_large":
            raise LimitTooLarge(AMOUNT_MILLI_MAX)
        if reply[0] == "replay":
            now = _chat_from_reply(chat_id, ["ok", *reply[3:]])
            return msgspec.structs.replace(
                now, limit_milli=int(reply[1]), used_milli=int(reply[2]), deleted=False, deleted_ms=0
            )
        if reply[0] != "ok":
            _raise_status(reply[0])
        return _chat_from_reply(chat_id, reply)

    @wrap_redis_errors
    async def delete_chat(self, config_id: str, chat_id: str) -> ChatState:
        """Soft delete, then drop the chat from the config's live index (a separate slot). A crash in
        between leaves a deleted chat in the live index, which `list_chats` notices and repairs."""
        reply = await self.scripts.call("delete_chat", keys=[self.keys.chat_meta(chat_id)], args=[config_id])
        if reply[0] != "ok":
            _raise_status(reply[0])
        await self.redis.zrem(self.keys.config_live_chats(config_id), chat_id)
        return _chat_from_reply(chat_id, reply)

    @wrap_redis_errors
    async def restore_chat(self, chat_id: str) -> ChatState:
        """Undo a soft delete of any config's chat (the admin surface), and list it again. The live index
        entry gets the chat's original score from the all-chats index, so it lists where it was."""
        reply = await self.scripts.call("restore_chat", keys=[self.keys.chat_meta(chat_id)])
        if reply[0] == "not_deleted":
            raise ChatNotDeleted()
        if reply[0] != "ok":
            _raise_status(reply[0])
        chat = _chat_from_reply(chat_id, reply)
        score = await self.redis.zscore(self.keys.config_chats(chat.config_id), chat_id)
        await self.redis.zadd(
            self.keys.config_live_chats(chat.config_id),
            {chat_id: score if score is not None else chat.created_ms * 1000},
        )
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
            chat = _chat_from_hash(chat_id, fields)
            if chat.deleted and not include_deleted:
                stale.append(chat_id)
                continue
            items.append(chat)
        if stale:
            await self.redis.zrem(index, *stale)
        return ChatPage(items=items, total=int(total)), bool(stale)

    # --- the message flow: reserve -> settle | void | expire -------------------------------------------
    # reserve and settle, the two calls of every message, are not wrapped in wrap_redis_errors: Scripts
    # (and the one other Redis read below) raise LedgerUnavailable themselves, which spares every
    # message two coroutine frames (issue 6).
    async def reserve(
        self,
        config: ConfigRecord,
        chat_id: str,
        *,
        prompt_tokens: int,
        completion_tokens_max: int,
        history_tokens_max: int,
        history_count_max: int,
        idempotency: IdempotencyKey | None = None,
    ) -> Reservation:
        """Hold enough for the prompt (the worker's known part plus the history that fits the budget)
        and up to `completion_tokens_max` reply tokens, capped by what the chat can pay.

        Raises InsufficientTokens (nothing held) when even one reply token is not payable. With an
        Idempotency-Key: ExchangeReplayed (its saved reply) when the key's exchange completed,
        DuplicateInFlight while it is open, IdempotencyKeyReused for another request's key."""
        # 128 random bits as 32 hex digits, like uuid4().hex without the UUID object (a hot path).
        reservation_id = os.urandom(16).hex()
        keys = self.keys.chat_keys(chat_id)
        fingerprint: list[str] = []
        if idempotency:
            keys.append(self.keys.chat_idempotency(chat_id, idempotency.digest))
            fingerprint = [idempotency.fingerprint]
        # With a multiplexer the worker keeps each chat's newest messages (ledger/context.py) and reads
        # the new ones natively in the script's transaction; when it has them, it also prices the
        # context itself and the script checks they are still the newest. Without a multiplexer (a
        # cluster, the embedded Redis) the script returns the context (issue 6).
        read_apart = self.scripts.multiplexer is not None and history_count_max > 0
        plan = self.contexts.plan(chat_id, keys[1], history_count_max) if read_apart else None
        known_id, known_tokens, known_count = "", 0, 0
        mode = "1"
        if plan is not None and plan.base is not None:
            mode = "2"
            known_tokens, known_count = plan.base.price(history_count_max, history_tokens_max)
            known_id = plan.base.newest_id
        elif plan is not None:
            mode = "0"
        limits = self.limits
        numbers = pack_numbers(
            prompt_tokens * config.prompt_weight_milli,
            config.prompt_weight_milli,
            config.completion_weight_milli,
            completion_tokens_max,
            history_tokens_max,
            history_count_max,
            limits.reservation_ttl_ms,
            limits.reservation_retention_ms,
            known_tokens,
            known_count,
            limits.idempotency_ttl_ms,
        )
        args: list[str | bytes] = [config.config_id, reservation_id, numbers, mode, known_id, *fingerprint]
        recent: list[list[object]] = []
        if plan is not None and not plan.alone:
            reply, recent = await self.scripts.call_then_read(
                "reserve", keys=keys, args=args, read=plan.command
            )
        else:
            reply = await self.scripts.call("reserve", keys=keys, args=args)
        status = reply[0]
        if status == "replay":
            raise ExchangeReplayed(decode_entry(reply[1]))
        if status == "insufficient":
            available, needed, limit, used = (int(x) for x in reply[1:5])
            raise InsufficientTokens(
                available_milli=available, needed_milli=needed, limit_milli=limit, used_milli=used
            )
        if status != "ok":
            _raise_status(status)
        if plan is not None:
            # The chat's newest messages as the reserve saw them: the transaction's read merged into
            # the cache, checked by the stream's length and newest id the script returned.
            length, newest_id = int(reply[6]), str(reply[7])
            if plan.alone:
                # Sent without the transaction: read what another worker added meanwhile, if anything.
                catch_up = plan.catch_up(length, newest_id)
                if catch_up is not None:
                    recent = await self._read(catch_up)
            newest = self.contexts.merge(
                chat_id, plan, recent, length=length, newest_id=newest_id, count=history_count_max
            )
            if newest is None:
                newest = await self._read_again(chat_id, keys[1], length, newest_id, history_count_max)
            context = newest[: int(reply[5])]
        else:
            context = decode_entries(reply[5])
        # The newest entries that fit the context budget, oldest first for the model.
        context.reverse()
        return Reservation(
            chat_id=chat_id,
            reservation_id=reservation_id,
            granted_milli=int(reply[1]),
            prompt_milli=int(reply[2]),
            completion_tokens_max=int(reply[3]),
            context=context,
            idempotency=idempotency,
            reclaimed=int(reply[4]),
        )

    async def _read_again(
        self, chat_id: str, messages_key: str, length: int, newest_id: str, count: int
    ) -> list[StoredMessage]:
        """The newest `count` messages when the cache and the transaction's read did not add up (a
        history recreated after a data loss): read again, anchored at the newest id the reserve saw.
        The history is append-only, so the result is the same as a whole read inside the transaction."""
        again: list[list[object]] = []
        if length:
            again = await self._read(("XREVRANGE", messages_key, newest_id, "-", "COUNT", count))
        return self.contexts.remember(chat_id, again, length=length, count=count)

    async def _read(self, command: Command) -> list[list[object]]:
        """A stream read of the context on the multiplexer; a Redis failure raises LedgerUnavailable.
        The hold the reserve made stays until its deadline: nothing gave it to a caller to void."""
        assert self.scripts.multiplexer is not None, "a context plan needs the multiplexer"
        try:
            entries: list[list[object]] = await self.scripts.multiplexer.execute(*command)
        except redis.exceptions.RedisError as exc:
            raise store_failure(exc) from exc
        return entries

    async def settle(
        self,
        reservation: Reservation,
        *,
        charge_milli: int,
        user_content: str,
        user_tokens: int,
        reply_content: str,
        reply_tokens: int,
        flags: str = "",
    ) -> Settlement:
        """Charge the exchange's actual cost, release the rest and append both messages atomically.

        A second settle or void of the same reservation changes nothing and raises its own
        ReservationError; a chat deleted meanwhile voids the hold and raises ChatDeleted."""
        chat_id = reservation.chat_id
        keys = self.keys.chat_keys(chat_id)
        fingerprint: list[str] = []
        if reservation.idempotency:
            keys.append(self.keys.chat_idempotency(chat_id, reservation.idempotency.digest))
            fingerprint = [reservation.idempotency.fingerprint]
        numbers = pack_numbers(
            charge_milli, self.limits.reservation_retention_ms, self.limits.idempotency_ttl_ms
        )
        reply = await self.scripts.call(
            "settle",
            keys=keys,
            args=[
                reservation.reservation_id,
                numbers,
                user_content,
                user_tokens,
                reply_content,
                reply_tokens,
                flags,
                pack_counts(user_tokens, reply_tokens),
                *fingerprint,
            ],
        )
        if reply[0] != "ok":
            _raise_status(reply[0])
        charged, shortfall = int(reply[1]), int(reply[2])
        user_entry, reply_entry = str(reply[3]), str(reply[4])
        final_flags = flags + ("s" if shortfall else "")
        user_message = make_message(
            user_entry, is_user=True, content=user_content, tokens=user_tokens, charged_milli=0, flags=""
        )
        ai_message = make_message(
            reply_entry,
            is_user=False,
            content=reply_content,
            tokens=reply_tokens,
            charged_milli=charged,
            flags=final_flags,
        )
        if self.scripts.multiplexer is not None:
            # This worker's next reserve of the chat then prices its context itself (ledger/context.py).
            self.contexts.extend(
                chat_id,
                [ai_message, user_message],
                previous_id=str(reply[8]),
                newest_id=reply_entry,
                length=int(reply[9]),
            )
        return Settlement(
            charged_milli=charged,
            shortfall_milli=shortfall,
            user_message=user_message,
            ai_message=ai_message,
            limit_milli=int(reply[5]),
            used_milli=int(reply[6]),
            reserved_milli=int(reply[7]),
        )

    @wrap_redis_errors
    async def void(self, reservation: Reservation) -> int:
        """Release a hold without charging; returns the milli-tokens released."""
        reply = await self.scripts.call(
            "void",
            keys=self.keys.chat_keys(reservation.chat_id),
            args=[reservation.reservation_id, self.limits.reservation_retention_ms],
        )
        if reply[0] != "ok":
            _raise_status(reply[0])
        return int(reply[1])

    # --- history ---------------------------------------------------------------------------------------
    @wrap_redis_errors
    async def read_history(self, config_id: str | None, chat_id: str, query: HistoryQuery) -> HistoryPage:
        """A page of history. `config_id=None` is the admin surface: any config's chat, deleted or not."""
        mode, position = query.script_args()
        reply = await self.scripts.call(
            "history",
            keys=[self.keys.chat_meta(chat_id), self.keys.chat_messages(chat_id)],
            args=[config_id or "", mode, position, query.limit],
        )
        if reply[0] != "ok":
            _raise_status(reply[0])
        return HistoryPage(items=decode_entries(reply[2]), total=int(reply[1]))

    # --- the journal ------------------------------------------------------------------------------------
    @wrap_redis_errors
    async def read_journal(
        self, chat_id: str, *, after: str | None = None, count: int = 100
    ) -> list[JournalEntry]:
        """Journal entries oldest first, after the raw entry id `after` (exclusive) when given."""
        start = f"({after}" if after else "-"
        raw = await self.redis.xrange(self.keys.chat_journal(chat_id), min=start, max="+", count=count)
        # The client decodes responses: ids and fields are str.
        entries = cast(list[tuple[str, dict[str, str]]], raw)
        return [_journal_entry(entry_id, fields) for entry_id, fields in entries]

    async def reconcile(self, chat_id: str) -> Reconciliation:
        """Add up the whole journal and compare it with the chat's counters. Reads in pages, so it is
        O(entries) in time but not in memory; the counters are read after the journal, so a chat that
        is moving may not reconcile until it is still."""
        used = reserved = limit = shortfall = expired = entries = 0
        after: str | None = None
        while batch := await self.read_journal(chat_id, after=after, count=1000):
            for entry in batch:
                used += entry.used_delta_milli
                reserved += entry.reserved_delta_milli
                limit += entry.limit_delta_milli
                shortfall += entry.shortfall_milli
                expired += entry.op == "expire"
            entries += len(batch)
            after = batch[-1].entry_id
        return Reconciliation(
            chat=await self.get_chat(None, chat_id),
            entries=entries,
            used_sum_milli=used,
            reserved_sum_milli=reserved,
            limit_sum_milli=limit,
            expired=expired,
            shortfall_milli=shortfall,
        )


def _journal_entry(entry_id: str, fields: dict[str, str]) -> JournalEntry:
    return JournalEntry(
        entry_id=entry_id,
        op=fields["op"],
        reservation_id=fields["rid"],
        used_delta_milli=int(fields["du"]),
        reserved_delta_milli=int(fields["dr"]),
        limit_delta_milli=int(fields["dl"]),
        shortfall_milli=int(fields["sf"]),
        timestamp_ms=int(entry_id.split("-")[0]),
    )
