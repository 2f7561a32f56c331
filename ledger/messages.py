"""The message flow, reserve -> settle | void | expire, and the history it writes (design.md 4, 5, 6).

Part of class Ledger (ledger/ledger.py). A message costs two round trips: the reserve, which holds
what the exchange may cost and returns the priced context (how it gets that context is the
ContextSource's business, ledger/context.py), and the settle, which charges at most the hold and
appends both messages atomically. A void releases a hold whose model call failed; a hold whose worker
died expires at its deadline, and the next reserve on the chat reclaims it.
"""

from __future__ import annotations

import os

from ledger.context import ContextSource, ReserveCall
from ledger.errors import wrap_redis_errors
from ledger.history import HistoryQuery, decode_entries, make_message
from ledger.idempotency import IdempotencyKey
from ledger.keys import Keyspace
from ledger.limits import LedgerLimits
from ledger.packing import pack_numbers
from ledger.replies import decode_history, decode_settle, decode_void
from ledger.results import ConfigRecord, HistoryPage, Reservation, Settlement
from ledger.scripts import Scripts


class Messages:
    """Ledger's methods on a chat's messages. Ledger.__init__ sets the attributes declared here."""

    keys: Keyspace
    limits: LedgerLimits
    scripts: Scripts
    context: ContextSource

    @wrap_redis_errors
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

        Raises InsufficientTokens (nothing held) when even one reply token is not payable with nothing
        held, and TokensHeld (nothing held) when it would be but other holds have it. With an
        Idempotency-Key: ExchangeReplayed (its saved reply) when the key's exchange completed,
        DuplicateInFlight while it is open, IdempotencyKeyReused for another request's key."""
        keys, fingerprint = self._exchange_keys(chat_id, idempotency)
        limits = self.limits
        call = ReserveCall(
            chat_id=chat_id,
            keys=keys,
            config_id=config.config_id,
            # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID.
            reservation_id=os.urandom(16).hex(),
            numbers=(
                prompt_tokens * config.prompt_weight_milli,
                config.prompt_weight_milli,
                config.completion_weight_milli,
                completion_tokens_max,
                history_tokens_max,
                history_count_max,
                limits.reservation_ttl_ms,
                limits.reservation_retention_ms,
                limits.idempotency_ttl_ms,
                limits.hold_shares,
            ),
            fingerprint=fingerprint,
            count_max=history_count_max,
            tokens_max=history_tokens_max,
        )
        granted, context = await self.context.reserve(call)
        # The newest messages that fit the budget, oldest first for the model.
        context.reverse()
        return Reservation(
            chat_id=chat_id,
            reservation_id=call.reservation_id,
            granted_milli=granted.granted_milli,
            prompt_milli=granted.prompt_milli,
            completion_tokens_max=granted.completion_tokens,
            context=context,
            idempotency=idempotency,
            reclaimed=granted.reclaimed,
        )

    @wrap_redis_errors
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
        """Charge the exchange's actual cost, at most the hold, release the rest and append both
        messages atomically; a cost above the hold is recorded as clamped and flagged 's'.

        A second settle or void of the same reservation changes nothing and raises its own
        ReservationError; a chat deleted meanwhile voids the hold and raises ChatDeleted."""
        chat_id = reservation.chat_id
        keys, fingerprint = self._exchange_keys(chat_id, reservation.idempotency)
        limits = self.limits
        numbers = pack_numbers(charge_milli, limits.reservation_retention_ms, limits.idempotency_ttl_ms)
        args: list[str | bytes | int] = [reservation.reservation_id, numbers, user_content, user_tokens]
        args += [reply_content, reply_tokens, flags, *fingerprint]
        reply = await self.scripts.call("settle", keys=keys, args=args)
        settled = decode_settle(reply)
        user_message = make_message(
            settled.user_id, is_user=True, content=user_content, tokens=user_tokens, charged_milli=0, flags=""
        )
        ai_message = make_message(
            settled.reply_id,
            is_user=False,
            content=reply_content,
            tokens=reply_tokens,
            charged_milli=settled.charged_milli,
            flags=flags + ("s" if settled.clamped_milli else ""),
        )
        self.context.settled(chat_id, [ai_message, user_message], settled)
        return Settlement(
            charged_milli=settled.charged_milli,
            clamped_milli=settled.clamped_milli,
            user_message=user_message,
            ai_message=ai_message,
            limit_milli=settled.limit_milli,
            used_milli=settled.used_milli,
            reserved_milli=settled.reserved_milli,
        )

    @wrap_redis_errors
    async def void(self, reservation: Reservation) -> int:
        """Release a hold without charging; returns the milli-tokens released."""
        reply = await self.scripts.call(
            "void",
            keys=self.keys.chat_keys(reservation.chat_id),
            args=[reservation.reservation_id, self.limits.reservation_retention_ms],
        )
        return decode_void(reply).released_milli

    @wrap_redis_errors
    async def read_history(self, config_id: str | None, chat_id: str, query: HistoryQuery) -> HistoryPage:
        """A page of history. `config_id=None` is the admin surface: any config's chat, deleted or not."""
        mode, position = query.script_args()
        reply = await self.scripts.call(
            "history",
            keys=[self.keys.chat_meta(chat_id), self.keys.chat_messages(chat_id)],
            args=[config_id or "", mode, position, query.limit],
        )
        page = decode_history(reply)
        return HistoryPage(items=decode_entries(page.entries), total=page.total)

    def _exchange_keys(
        self, chat_id: str, idempotency: IdempotencyKey | None
    ) -> tuple[list[str], tuple[str, ...]]:
        """The exchange scripts' KEYS, with the Idempotency-Key's record and the chat's index of the
        records last, and the arguments that go with the record (the request's fingerprint)."""
        keys = self.keys.chat_keys(chat_id)
        if idempotency is None:
            return keys, ()
        keys += [
            self.keys.chat_idempotency(chat_id, idempotency.digest),
            self.keys.chat_idempotency_index(chat_id),
        ]
        return keys, (idempotency.fingerprint,)
