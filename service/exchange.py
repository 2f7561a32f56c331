"""One message exchange: reserve -> model -> settle, or void on failure (design.md section 4).

Two Redis round trips on the hot path: the reserve (which also returns the priced context) and the
settle (which charges and appends both messages atomically, at most the hold). A failure before any of
the reply reached the client voids the hold, so nothing is charged and nothing is written; a worker
that dies instead leaves a hold that the next reserve on the chat reclaims after its deadline.

Once part of a streamed reply reached the client, every ending pays for what the client received and
nothing else: the client leaving, the model failing or stalling, or the model going past its budget
(cut there) all settle the prompt plus the tokens delivered and save the partial reply, flagged
truncated. Each ledger call has one call site (`_reserve`, `_settle`, `_void`), and the ones that move
money after the model ran are shielded from the handler's cancellation, so a client that goes away
cannot make spend disappear. When a response ends, its hold is resolved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
import structlog

import ledger
from service.metrics import Metrics
from service.providers import (
    Completion,
    CompletionRequest,
    Provider,
    ProviderError,
    ProviderTimeout,
    ReplyStream,
    open_stream,
)
from service.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Called with the deltas of a streamed reply as they arrive, those that arrived together in one call (so
# they can go out in one write); raising (or being cancelled) means the client left.
DeltaSink = Callable[[Sequence[str]], Awaitable[None]]


class Exchanged(msgspec.Struct, frozen=True, kw_only=True):
    """A settled exchange and the completion it charged for."""

    settlement: ledger.Settlement
    completion: Completion


class ClientGone(Exception):
    """The client stopped taking a streamed reply. What was generated is settled (`settlement`, None
    if the settle failed); nothing more should be written to the client."""

    def __init__(self, settlement: ledger.Settlement | None) -> None:
        super().__init__("The client left before the reply was complete.")
        self.settlement = settlement


class Exchange:
    def __init__(
        self, ledger_: ledger.Ledger, provider: Provider, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self._ledger = ledger_
        self._provider = provider
        self._settings = settings
        self._metrics = metrics or Metrics()

    async def send(
        self,
        config: ledger.ConfigRecord,
        chat_id: str,
        content: str,
        idempotency: ledger.IdempotencyKey | None = None,
    ) -> ledger.Settlement:
        """Save `content` and the model's reply to the chat and charge the exchange, or raise.

        With an Idempotency-Key whose exchange completed before, raises ledger.ExchangeReplayed with the
        saved reply: no model call and no charge (design.md section 5)."""
        reservation = await self._reserve(config, chat_id, content, idempotency)
        try:
            with self._upstream_timer():
                completion = await self._provider.complete(self._request(config, reservation, content))
        except BaseException:
            # Shielded: a cancelled request must still give its hold back.
            await _shielded(self._void(reservation))
            raise
        return await _shielded(self._settle(config, reservation, content, completion))

    async def stream(
        self,
        config: ledger.ConfigRecord,
        chat_id: str,
        content: str,
        on_delta: DeltaSink,
        idempotency: ledger.IdempotencyKey | None = None,
    ) -> Exchanged:
        """Like `send`, handing the deltas of the reply to `on_delta` as they arrive.

        A failure of the chat (402, 404...) raises. A failure of the model (ProviderError) raises
        too, after voiding the hold if no delta was handed on, or settling what was if some were;
        the caller can tell from whether it has sent anything whether to answer with a plain error
        or end its stream with one. A client that left (`on_delta` raised, or the task was
        cancelled) gets the partial reply settled, then ClientGone (or the CancelledError) is
        raised."""
        reservation = await self._reserve(config, chat_id, content, idempotency)
        # One model call, timed once: from the request to the last delta (or the failure).
        started = time.perf_counter()
        try:
            with self._upstream_timer(started, ends=False):
                reply = await open_stream(self._provider, self._request(config, reservation, content))
        except BaseException:
            await _shielded(self._void(reservation))
            raise
        try:
            with self._upstream_timer(started):
                await _relay(reply, on_delta)
        except asyncio.CancelledError:
            # The handler was cancelled: aiohttp does that when the client disconnects.
            await self._abandon(config, reservation, content, reply)
            raise
        except ClientGone:
            raise ClientGone(await self._abandon(config, reservation, content, reply)) from None
        except BaseException:
            await reply.aclose()
            await _shielded(self._fail(config, reservation, content, reply))
            raise
        completion = reply.completion()
        settlement = await _shielded(self._settle(config, reservation, content, completion))
        return Exchanged(settlement=settlement, completion=completion)

    async def _abandon(
        self,
        config: ledger.ConfigRecord,
        reservation: ledger.Reservation,
        content: str,
        reply: ReplyStream,
    ) -> ledger.Settlement | None:
        """The client left mid-reply: stop the model, then settle what it generated so far."""
        await reply.aclose()
        return await _shielded(self._settle_partial(config, reservation, content, reply, "stream_abandoned"))

    async def _fail(
        self,
        config: ledger.ConfigRecord,
        reservation: ledger.Reservation,
        content: str,
        reply: ReplyStream,
    ) -> None:
        """The model failed mid-reply: the client pays for the deltas it received, if any (the model
        server bills the operator for them either way), else for nothing."""
        if reply.delivered:
            await self._settle_partial(config, reservation, content, reply, "stream_failed_settled")
        else:
            await self._void(reservation)

    def _request(
        self, config: ledger.ConfigRecord, reservation: ledger.Reservation, content: str
    ) -> CompletionRequest:
        return CompletionRequest(
            system_prompt=config.system_prompt,
            context=reservation.context,
            user_content=content,
            # The hold's reply budget, never the config's wish: the model cannot spend past the grant.
            max_tokens=reservation.completion_tokens_max,
            model=config.model,
            temperature=config.temperature,
        )

    # --- the ledger calls: one call site each ---------------------------------------------------------
    async def _reserve(
        self,
        config: ledger.ConfigRecord,
        chat_id: str,
        content: str,
        idempotency: ledger.IdempotencyKey | None,
    ) -> ledger.Reservation:
        count = self._provider.count_tokens
        try:
            reservation = await self._ledger.reserve(
                config,
                chat_id,
                prompt_tokens=count(config.system_prompt) + count(content),
                completion_tokens_max=config.max_output_tokens or self._settings.max_output_tokens,
                history_tokens_max=self._settings.history_tokens,
                history_count_max=self._settings.history_messages,
                idempotency=idempotency,
            )
        except ledger.InsufficientTokens:
            self._metrics.insufficient.inc()
            raise
        except ledger.TokensHeld:
            self._metrics.tokens_held.inc()
            raise
        self._metrics.reserved(reservation)
        if reservation.reclaimed:
            self._metrics.reservations_expired.inc(reservation.reclaimed)
        return reservation

    async def _settle(
        self,
        config: ledger.ConfigRecord,
        reservation: ledger.Reservation,
        content: str,
        completion: Completion,
    ) -> ledger.Settlement:
        """Charge `completion` (the settle clamps it at the hold); a failure that is not a ledger
        outcome is a bug, and voids the hold before it is raised, so the hold is resolved anyway."""
        try:
            settlement = await self._ledger.settle(
                reservation,
                charge_milli=charge_milli(config, completion),
                user_content=content,
                user_tokens=self._provider.count_tokens(content),
                reply_content=completion.content,
                # The stored count prices the reply as context later: never more than was delivered.
                reply_tokens=min(completion.completion_tokens, reservation.completion_tokens_max),
                flags=("t" if completion.truncated else "") + ("e" if completion.estimated else ""),
            )
        except ledger.ReservationNotFound as exc:
            # Our own reserve made this hold, so only the store can have lost it: a failover that
            # promoted a replica the reserve had not reached. Nothing was charged; a retry runs again.
            raise ledger.LedgerUnavailable(
                "The token store lost this exchange's hold (a failover); nothing was charged, retry."
            ) from exc
        except ledger.LedgerError:
            raise
        except Exception:
            await self._void(reservation)
            raise
        self._metrics.settled(reservation, settlement)
        self._metrics.completed(self._provider.name, completion)
        return settlement

    async def _settle_partial(
        self,
        config: ledger.ConfigRecord,
        reservation: ledger.Reservation,
        content: str,
        reply: ReplyStream,
        event: str,
    ) -> ledger.Settlement | None:
        """Settle what a stream generated before it was cut short, logged as `event`; a failure is
        logged, not raised: the client left, or the model's own error is what it will be told."""
        partial = reply.partial()
        try:
            settlement = await self._settle(config, reservation, content, partial)
        except ledger.LedgerError as exc:
            log.warning("partial_settle_failed", chat_id=reservation.chat_id, code=exc.code)
            return None
        log.info(
            event,
            chat_id=reservation.chat_id,
            completion_tokens=partial.completion_tokens,
            charged_milli=settlement.charged_milli,
        )
        return settlement

    async def _void(self, reservation: ledger.Reservation) -> None:
        try:
            self._metrics.voided(await self._ledger.void(reservation))
        except ledger.LedgerError as exc:
            # The hold stays until its deadline, when the next reserve reclaims it: nothing is lost.
            log.warning("void_failed", chat_id=reservation.chat_id, code=exc.code)

    @contextmanager
    def _upstream_timer(self, started: float | None = None, *, ends: bool = True) -> Iterator[None]:
        """Count a model call's failures by kind, and time it for the metrics: from `started` (else
        the block's start) to the block's end, unless the call goes on past a block that does not
        `end` it without failing (a stream that opened)."""
        started = time.perf_counter() if started is None else started
        ended = True
        try:
            yield
            ended = ends
        except ProviderTimeout:
            self._metrics.upstream_errors.labels(self._provider.name, "timeout").inc()
            raise
        except ProviderError:
            self._metrics.upstream_errors.labels(self._provider.name, "error").inc()
            raise
        finally:
            if ended:
                self._metrics.observe_upstream(self._provider.name, time.perf_counter() - started)


def charge_milli(config: ledger.ConfigRecord, completion: Completion) -> int:
    """The exchange's cost: each side's tokens times its weight, exact in milli-tokens (design.md 2)."""
    return (
        completion.prompt_tokens * config.prompt_weight_milli
        + completion.completion_tokens * config.completion_weight_milli
    )


async def _relay(reply: ReplyStream, on_delta: DeltaSink) -> None:
    """Hand every delta to the sink; a sink failure becomes ClientGone, told apart from the model's."""
    while (batch := await reply.next_batch()) is not None:
        try:
            await on_delta(batch)
        except Exception as exc:
            # Usually a reset connection; the type is logged so that anything else shows.
            log.info("client_gone", cause=type(exc).__name__)
            raise ClientGone(None) from exc


async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end even if the caller is cancelled meanwhile: once the model has run, its
    hold must be settled or voided. A failure nobody is left to await is logged."""
    task = asyncio.ensure_future(coro)
    task.add_done_callback(_log_unexpected)
    return await asyncio.shield(task)


def _log_unexpected(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, ledger.LedgerError):
        log.error("ledger_call_failed", error=repr(exc))
