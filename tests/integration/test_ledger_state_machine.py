"""Exact invariants under any interleaving, on a real Redis only (style.md 17, design.md sections 2 and 4).

A state machine interleaves every money operation across several Ledger instances, each on its own
client, and compares Redis with an exact model after each step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar, cast

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ledger import (
    ConfigRecord,
    InsufficientTokens,
    Keyspace,
    Ledger,
    LedgerLimits,
    Reservation,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationError,
    ReservationExpired,
    ReservationNotFound,
    Settlement,
    TenantStore,
    TokensHeld,
    connect,
)
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.redis

T = TypeVar("T")


SHORT_TTL_MS = 30
# Timing margin for deciding, from this process's clock, whether Redis must (or cannot) have seen a
# short hold's deadline pass: both clocks are this machine's, but they tick separately.
CLOCK_SLACK_MS = 3.0


@dataclass
class Hold:
    reservation: Reservation
    short: bool
    issued_before_ms: float
    issued_after_ms: float


@dataclass
class Model:
    """What Redis must hold: the balance, the open holds, the resolved reservations (with the error a
    replay must raise) and the tokens of every history message."""

    limit: int
    used: int = 0
    expired: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)
    resolved: dict[str, tuple[Reservation, type[ReservationError]]] = field(default_factory=dict)
    history_tokens: list[int] = field(default_factory=list)

    @property
    def reserved(self) -> int:
        return sum(hold.reservation.granted_milli for hold in self.holds.values())

    def resolve(self, reservation_id: str, replay_error: type[ReservationError]) -> None:
        self.resolved[reservation_id] = (self.holds.pop(reservation_id).reservation, replay_error)

    def expire(self, reservation_id: str) -> None:
        self.resolve(reservation_id, ReservationExpired)
        self.expired += 1


def _now_ms() -> float:
    return time.monotonic() * 1000


class LedgerMachine(RuleBasedStateMachine):
    """Reserve, settle (charges above the grant included), void, top up and expire, in any order."""

    url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        assert self.url, "set LedgerMachine.url to the test Redis first"
        self.loop = asyncio.new_event_loop()
        self.redis = connect(self.url)
        self.keys = Keyspace("clmachine")
        self.long = Ledger(self.redis, self.keys)
        self.short = Ledger(self.redis, self.keys, LedgerLimits(reservation_ttl_ms=SHORT_TTL_MS))
        self.config: ConfigRecord | None = None
        self.chat_id = ""
        self.model = Model(limit=0)

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        try:
            self.run(self.redis.aclose())
        finally:
            self.loop.close()

    # --- setup ---------------------------------------------------------------------------------------
    @initialize(
        limit=st.integers(min_value=0, max_value=400_000),
        prompt_weight=st.sampled_from([0, 500, 1000, 1500]),
        completion_weight=st.sampled_from([0, 1000, 2500]),
    )
    def create_chat(self, limit: int, prompt_weight: int, completion_weight: int) -> None:
        """A fresh config with drawn weights and a chat with a drawn limit: no state leaks between runs."""
        self.run(self.long.start())
        tenants = TenantStore(self.redis, self.keys)
        self.config = self.run(
            tenants.create_config(
                agent_name="Agent",
                company_name="Co",
                prompt_weight_milli=prompt_weight,
                completion_weight_milli=completion_weight,
            )
        )
        self.chat_id = self.run(self.long.create_chat(self.config, limit)).chat_id
        self.model = Model(limit=limit)

    # --- expiry bookkeeping ------------------------------------------------------------------------------
    def _call_reaping(self, operation: Awaitable[T]) -> T | BaseException:
        """Run an operation that reaps due holds first, then apply to the model the reaps Redis did.

        Whether a short hold was due when the script ran is certain from this process's clock except
        in a window of a few ms around its deadline; there the `expired` counter in the chat's meta says
        how many were reaped, and holds are reaped in deadline order, so the model follows exactly."""
        started = _now_ms()
        try:
            result: T | BaseException = self.run(operation)
        except (InsufficientTokens, TokensHeld, ReservationError) as exc:
            result = exc
        finished = _now_ms()
        short_holds = sorted(
            (hold for hold in self.model.holds.values() if hold.short), key=lambda hold: hold.issued_after_ms
        )
        surely = [h for h in short_holds if started - h.issued_after_ms >= SHORT_TTL_MS + CLOCK_SLACK_MS]
        maybe = [
            h
            for h in short_holds
            if h not in surely and finished - h.issued_before_ms > SHORT_TTL_MS - CLOCK_SLACK_MS
        ]
        counted = int(cast(str, self.run(self.redis.hget(self.keys.chat_meta(self.chat_id), "expired"))))
        extra = counted - self.model.expired - len(surely)
        assert 0 <= extra <= len(maybe), (counted, self.model.expired, len(surely), len(maybe))
        for hold in surely + maybe[:extra]:
            self.model.expire(hold.reservation.reservation_id)
        return result

    # --- rules ---------------------------------------------------------------------------------------
    @rule(
        prompt_tokens=st.integers(min_value=0, max_value=60),
        completion_tokens_max=st.integers(min_value=0, max_value=80),
        history_tokens_max=st.integers(min_value=0, max_value=40),
        history_count_max=st.integers(min_value=0, max_value=5),
        short=st.booleans(),
    )
    def reserve(
        self,
        prompt_tokens: int,
        completion_tokens_max: int,
        history_tokens_max: int,
        history_count_max: int,
        short: bool,
    ) -> None:
        """Reserve with a short or a long deadline; the model prices the context and the grant itself."""
        assert self.config is not None
        before = _now_ms()
        result = self._call_reaping(
            (self.short if short else self.long).reserve(
                self.config,
                self.chat_id,
                prompt_tokens=prompt_tokens,
                completion_tokens_max=completion_tokens_max,
                history_tokens_max=history_tokens_max,
                history_count_max=history_count_max,
            )
        )
        after = _now_ms()
        model, config = self.model, self.config
        context_tokens: list[int] = []
        for tokens in reversed(model.history_tokens[max(0, len(model.history_tokens) - history_count_max) :]):
            if sum(context_tokens) + tokens > history_tokens_max:
                break
            context_tokens.append(tokens)
        prompt = (prompt_tokens + sum(context_tokens)) * config.prompt_weight_milli
        available = model.limit - model.used - model.reserved
        needed = prompt + config.completion_weight_milli
        if available < needed:
            # 402 only when the chat cannot pay with nothing held; else its tokens are only held.
            refusal = InsufficientTokens if model.limit - model.used < needed else TokensHeld
            assert isinstance(result, refusal), result
            assert (result.available_milli, result.needed_milli) == (available, needed)
            assert (result.limit_milli, result.used_milli) == (model.limit, model.used)
            return
        assert isinstance(result, Reservation), result
        completion = completion_tokens_max
        if config.completion_weight_milli > 0:
            completion = min(completion, (available - prompt) // config.completion_weight_milli)
        assert result.prompt_milli == prompt
        assert result.completion_tokens_max == completion
        assert result.granted_milli == prompt + completion * config.completion_weight_milli
        assert [message.tokens for message in reversed(result.context)] == context_tokens
        model.holds[result.reservation_id] = Hold(result, short, before, after)

    def _open(self, pick: int) -> Reservation:
        holds = list(self.model.holds.values())
        return holds[pick % len(holds)].reservation

    @rule(
        pick=st.integers(min_value=0, max_value=1000),
        extra_milli=st.integers(min_value=-50_000, max_value=500_000),
        reply_tokens=st.integers(min_value=0, max_value=9),
        flags=st.sampled_from(["", "t", "e"]),
    )
    def settle(self, pick: int, extra_milli: int, reply_tokens: int, flags: str) -> None:
        """Settle an open hold, charging anything from less than its grant to far more than the chat has."""
        if not self.model.holds:
            return
        reservation = self._open(pick)
        charge = max(0, reservation.granted_milli + extra_milli)
        result = self._call_reaping(
            self.long.settle(
                reservation,
                charge_milli=charge,
                user_content="q",
                user_tokens=1,
                reply_content="a",
                reply_tokens=reply_tokens,
                flags=flags,
            )
        )
        model = self.model
        if reservation.reservation_id not in model.holds:  # it passed its deadline before this settle
            assert isinstance(result, ReservationExpired), result
            return
        assert isinstance(result, Settlement), result
        model.resolve(reservation.reservation_id, ReservationAlreadySettled)
        # The hold is the most an exchange can cost (design.md section 4).
        charged = min(charge, reservation.granted_milli)
        model.used += charged
        model.history_tokens += [1, reply_tokens]
        assert (result.charged_milli, result.clamped_milli) == (charged, charge - charged)
        assert result.ai_message.flags == flags + ("s" if charge > charged else "")
        assert (result.limit_milli, result.used_milli, result.reserved_milli) == (
            model.limit,
            model.used,
            model.reserved,
        )

    @rule(pick=st.integers(min_value=0, max_value=1000))
    def void(self, pick: int) -> None:
        """Void an open hold: its whole grant is released."""
        if not self.model.holds:
            return
        reservation = self._open(pick)
        result = self._call_reaping(self.long.void(reservation))
        if reservation.reservation_id not in self.model.holds:
            assert isinstance(result, ReservationExpired), result
            return
        assert isinstance(result, int), result
        assert result == reservation.granted_milli
        self.model.resolve(reservation.reservation_id, ReservationAlreadyVoided)

    @rule(pick=st.integers(min_value=0, max_value=1000), settle=st.booleans())
    def replay(self, pick: int, settle: bool) -> None:
        """Settling or voiding a resolved reservation again raises the error naming how it ended."""
        if not self.model.resolved:
            return
        resolved = list(self.model.resolved.values())
        reservation, replay_error = resolved[pick % len(resolved)]
        operation = (
            self.long.settle(
                reservation,
                charge_milli=1000,
                user_content="q",
                user_tokens=1,
                reply_content="a",
                reply_tokens=1,
            )
            if settle
            else self.long.void(reservation)
        )
        result = self._call_reaping(operation)
        assert type(result) is replay_error, result

    @rule(add_milli=st.integers(min_value=1, max_value=150_000))
    def top_up(self, add_milli: int) -> None:
        """Raise the limit of a chat running low; top-up does not reap."""
        assert self.config is not None
        if self.model.limit - self.model.used - self.model.reserved >= 100_000:
            return
        state = self.run(self.long.top_up(self.config.config_id, self.chat_id, add_milli))
        self.model.limit += add_milli
        assert state.limit_milli == self.model.limit

    @rule()
    def expire(self) -> None:
        """Let every short hold pass its deadline, then trigger a reap with a void of an unknown id."""
        if not any(hold.short for hold in self.model.holds.values()):
            return
        newest = max(hold.issued_after_ms for hold in self.model.holds.values() if hold.short)
        time.sleep(max(0.0, newest + SHORT_TTL_MS + 2 * CLOCK_SLACK_MS - _now_ms()) / 1000)
        unknown = Reservation(
            chat_id=self.chat_id,
            reservation_id=uuid.uuid4().hex,
            granted_milli=1,
            prompt_milli=1,
            completion_tokens_max=1,
            context=[],
        )
        result = self._call_reaping(self.long.void(unknown))
        assert isinstance(result, ReservationNotFound), result
        assert not any(hold.short for hold in self.model.holds.values())

    # --- invariants ----------------------------------------------------------------------------------
    @invariant()
    def balance_matches_the_model(self) -> None:
        """The design's invariant holds and Redis's counters and open holds are the model's, exactly."""
        if self.config is None:
            return
        state = self.run(self.long.get_chat(self.config.config_id, self.chat_id))
        open_holds = cast(
            dict[str, str], self.run(self.redis.hgetall(self.keys.chat_reservations(self.chat_id)))
        )
        open_amounts = {rid: int(value) for rid, value in open_holds.items() if value.isdigit()}
        assert state.used_milli >= 0
        assert state.reserved_milli >= 0
        assert state.used_milli + state.reserved_milli <= state.limit_milli
        assert state.reserved_milli == sum(open_amounts.values())
        model = self.model
        assert (state.limit_milli, state.used_milli, state.reserved_milli) == (
            model.limit,
            model.used,
            model.reserved,
        )
        assert open_amounts == {rid: hold.reservation.granted_milli for rid, hold in model.holds.items()}

    @invariant()
    def due_is_never_late(self) -> None:
        """The meta's `due` (reaping is skipped before it) is at most the earliest deadline or forget
        time: were it later, a dead worker's hold could outlive its deadline."""
        if self.config is None:
            return
        due = self.run(self.redis.hget(self.keys.chat_meta(self.chat_id), "due"))
        earliest = self.run(self.redis.zrange(self.keys.chat_deadlines(self.chat_id), 0, 0, withscores=True))
        if due is not None and earliest:
            assert int(cast(str, due)) <= float(earliest[0][1]), (due, earliest)


@pytest.mark.slow
class TestLedgerStateMachine:
    def test_model_equals_redis_after_every_step(self, redis_server: RedisServer) -> None:
        """Any interleaving of reserve, settle, void, top-up and expiry keeps Redis equal to a model."""
        LedgerMachine.url = redis_server.url
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(max_examples=40, stateful_step_count=25, deadline=None, database=None),
        )
