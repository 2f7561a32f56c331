"""Concurrent exchanges on one chat from several workers, on a real Redis only (style.md 17, design.md
sections 2 and 4): no overspend, each settle's pair in the history, contexts a priced run of it.

Many workers are simulated by several Ledger instances, each on its own client and connection pool.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar, cast

import pytest
from redis.asyncio import Redis

from ledger import (
    ConfigRecord,
    HistoryQuery,
    InsufficientTokens,
    Keyspace,
    Ledger,
    Reservation,
    Settlement,
    StoredMessage,
    TenantStore,
    TokensHeld,
)
from tests.integration.helpers import WORKERS

pytestmark = pytest.mark.redis

T = TypeVar("T")

EXCHANGES = 300


@dataclass
class Outcome:
    index: int
    settlement: Settlement | None = None
    error: BaseException | None = None


class TestConcurrentExchanges:
    async def test_many_workers_one_chat(
        self, worker_ledgers: list[Ledger], real_redis: Redis, keyspace: Keyspace
    ) -> None:
        """300 exchanges from 3 concurrent workers on one chat never overspend, charging each success once."""
        tenants = TenantStore(real_redis, keyspace)
        config = await tenants.create_config(agent_name="Agent", company_name="Co")
        limit_milli = 2_000_000  # pays for a small part of the exchanges below
        chat = await worker_ledgers[0].create_chat(config, limit_milli)
        # Two waves: the even exchanges start at once; the odd ones start when 20 of the first wave have
        # settled (or the whole wave is done), so their reserves race with settles and history writes.
        second_wave = asyncio.Event()
        first_wave_settled = itertools.count(1)
        first_wave_done = itertools.count(1)

        async def exchange(index: int) -> Outcome:
            if index % 2:
                await second_wave.wait()
            try:
                return await one_exchange(index)
            finally:
                if index % 2 == 0 and next(first_wave_done) == EXCHANGES // 2:
                    second_wave.set()

        async def one_exchange(index: int) -> Outcome:
            ledger = worker_ledgers[index % WORKERS]
            try:
                reservation = await ledger.reserve(
                    config,
                    chat.chat_id,
                    prompt_tokens=5 + index % 11,
                    completion_tokens_max=25,
                    history_tokens_max=30,
                    history_count_max=4,
                )
            except (InsufficientTokens, TokensHeld) as exc:
                return Outcome(index, error=exc)
            for _ in range(index % 4):  # the model call, of varying length
                await asyncio.sleep(0)
            reply_tokens = min(reservation.completion_tokens_max, index % 26)
            settlement = await ledger.settle(
                reservation,
                charge_milli=reservation.prompt_milli + reply_tokens * config.completion_weight_milli,
                user_content=f"q{index}",
                user_tokens=1 + index % 3,
                reply_content=f"a{index}",
                reply_tokens=reply_tokens,
            )
            if index % 2 == 0 and next(first_wave_settled) == 20:
                second_wave.set()
            return Outcome(index, settlement=settlement)

        outcomes = await asyncio.gather(
            *(exchange(index) for index in range(EXCHANGES)), return_exceptions=True
        )

        failures = [outcome for outcome in outcomes if not isinstance(outcome, Outcome)]
        assert failures == []
        done = cast(list[Outcome], outcomes)
        successes = {outcome.index: outcome.settlement for outcome in done if outcome.settlement is not None}
        refused = [outcome.error for outcome in done if outcome.settlement is None]
        assert all(isinstance(error, InsufficientTokens | TokensHeld) for error in refused)
        assert successes, "the limit pays for some exchanges"
        assert refused, "the limit does not pay for all exchanges"
        errors = cast(list[InsufficientTokens | TokensHeld], refused)
        # The scenario did what it is for: refusals with holds open (held, not spent: a retry may pass),
        # and after spending began. Each refusal says which: held only while holds stand in the way.
        assert any(isinstance(e, TokensHeld) for e in errors), "holds refused some"
        assert all(e.reserved_milli > 0 for e in errors if isinstance(e, TokensHeld))
        # Held: payable with nothing held; insufficient: not payable even then.
        held = [e for e in errors if isinstance(e, TokensHeld)]
        insufficient = [e for e in errors if isinstance(e, InsufficientTokens)]
        assert all(e.limit_milli - e.used_milli >= e.needed_milli > e.available_milli for e in held)
        assert all(e.limit_milli - e.used_milli < e.needed_milli for e in insufficient)
        assert any(error.used_milli > 0 for error in errors), "reserves raced with settles"
        assert len(successes) + len(refused) == EXCHANGES

        state = await worker_ledgers[1].get_chat(config.config_id, chat.chat_id)
        assert state.used_milli <= state.limit_milli == limit_milli
        assert state.reserved_milli == 0
        assert sum(settlement.charged_milli for settlement in successes.values()) == state.used_milli
        assert all(settlement.clamped_milli == 0 for settlement in successes.values())

        page = await worker_ledgers[2].read_history(
            config.config_id, chat.chat_id, HistoryQuery(limit=10_000)
        )
        assert page.total == len(page.items) == 2 * len(successes)
        _assert_pairs(page.items, successes)


def _assert_pairs(history: list[StoredMessage], successes: Mapping[int, Settlement]) -> None:
    """History alternates user/reply, each reply right after its own user message, each success once."""
    seen: set[int] = set()
    for user, reply in zip(history[::2], history[1::2], strict=True):
        assert (user.is_user, reply.is_user) == (True, False)
        index = int(user.content.removeprefix("q"))
        assert reply.content == f"a{index}"
        settlement = successes[index]
        assert reply.charged_milli == settlement.charged_milli
        assert (user.message_id, reply.message_id) == (
            settlement.user_message.message_id,
            settlement.ai_message.message_id,
        )
        seen.add(index)
    assert seen == set(successes)


class TestContextUnderConcurrency:
    """Each worker keeps its own copy of a chat's newest messages and reads only what is new, with or
    without the reserve's transaction (ledger/context.py). Whatever the interleaving, a context must be
    what the script would have chosen from the history itself."""

    @pytest.mark.parametrize("workers", [1, WORKERS], ids=["one-worker", "three-workers"])
    async def test_every_context_is_a_priced_run_of_the_history(
        self, worker_ledgers: list[Ledger], real_redis: Redis, keyspace: Keyspace, workers: int
    ) -> None:
        """150 exchanges racing on one chat, from one worker (its own reserves and settles interleave)
        or from three, on 4 chats with 4 patterns of delays and of how many run at once. Every
        reservation's context is a run of consecutive messages of the final history (which is
        append-only, so the run existed whole when the reserve ran), within the bounds, as long as
        the bounds allow (the message before it would not have fitted), and priced at exactly its
        messages' tokens."""
        tenants = TenantStore(real_redis, keyspace)
        config = await tenants.create_config(agent_name="Agent", company_name="Co")
        for pattern in range(4):
            held = await self._race(worker_ledgers[:workers], config, pattern)
            chat_id = held[0].chat_id
            history: list[StoredMessage] = []
            while len(history) < 300:
                page = await worker_ledgers[0].read_history(
                    config.config_id, chat_id, HistoryQuery(limit=100, offset=len(history))
                )
                history += page.items
            position = {message.message_id: at for at, message in enumerate(history)}
            for reservation in held:
                at = [position[message.message_id] for message in reservation.context]
                tokens = sum(message.tokens for message in reservation.context)
                first = at[0] if at else 0
                assert at == list(range(first, first + len(at))), pattern
                assert len(at) <= self.COUNT_MAX
                assert tokens <= self.TOKENS_MAX
                if first > 0 and len(at) < self.COUNT_MAX:
                    assert tokens + history[first - 1].tokens > self.TOKENS_MAX, (pattern, at, tokens)
                expected_milli = (self.PROMPT_TOKENS + tokens) * config.prompt_weight_milli
                assert reservation.prompt_milli == expected_milli, pattern
            # Not vacuous: nearly every context holds several exchanges' messages.
            assert sum(len(reservation.context) >= 4 for reservation in held) > 120

    COUNT_MAX, TOKENS_MAX, PROMPT_TOKENS = 6, 40, 3

    async def _race(self, ledgers: list[Ledger], config: ConfigRecord, pattern: int) -> list[Reservation]:
        """150 exchanges on a new chat, a few at a time, each waiting `pattern`-dependent turns of the
        event loop before its reserve and between its reserve and its settle."""
        chat = await ledgers[0].create_chat(config, 10**12)
        held: list[Reservation] = []

        async def exchange(index: int) -> None:
            ledger = ledgers[index % len(ledgers)]
            for _ in range((index * (pattern + 1)) % 3):
                await asyncio.sleep(0)
            reservation = await ledger.reserve(
                config,
                chat.chat_id,
                prompt_tokens=self.PROMPT_TOKENS,
                completion_tokens_max=5,
                history_tokens_max=self.TOKENS_MAX,
                history_count_max=self.COUNT_MAX,
            )
            held.append(reservation)
            for _ in range((index + pattern) % 4):  # the model call, of varying length
                await asyncio.sleep(0)
            await ledger.settle(
                reservation,
                charge_milli=1,
                user_content=f"q{index}",
                user_tokens=1 + index % 5,
                reply_content=f"a{index}",
                reply_tokens=index % 9,
            )

        # At most `in_flight` exchanges at once, a new one starting as each ends: reserves keep meeting
        # other exchanges' settles, the first ones an empty chat.
        in_flight = asyncio.Semaphore(4 + 2 * pattern)

        async def limited(index: int) -> None:
            async with in_flight:
                await exchange(index)

        await asyncio.gather(*(limited(index) for index in range(150)))
        return held
