"""Many workers on one small chat (real redis-server): every refusal is TokensHeld while the chat could
pay with nothing held, InsufficientTokens only when it could not, and the money adds up. Replaces
test_ledger_concurrency's test_many_workers_one_chat, which expected every refusal to be
InsufficientTokens (the 402) even while the tokens were only held."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from ledger import (
    HistoryQuery,
    InsufficientTokens,
    Keyspace,
    Ledger,
    LedgerError,
    Settlement,
    TenantStore,
    TokensHeld,
)
from tests.integration.helpers import WORKERS

pytestmark = pytest.mark.redis

EXCHANGES = 300


async def test_many_workers_one_chat(
    worker_ledgers: list[Ledger], real_redis: Redis, keyspace: Keyspace
) -> None:
    config = await TenantStore(real_redis, keyspace).create_config(agent_name="Agent", company_name="Co")
    limit_milli = 2_000_000  # pays for a small part of the exchanges below
    chat = await worker_ledgers[0].create_chat(config, limit_milli)

    async def one_exchange(index: int) -> Settlement | LedgerError:
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
            return exc
        for _ in range(index % 4):  # the model call, of varying length
            await asyncio.sleep(0)
        reply_tokens = min(reservation.completion_tokens_max, index % 26)
        return await ledger.settle(
            reservation,
            charge_milli=reservation.prompt_milli + reply_tokens * config.completion_weight_milli,
            user_content=f"q{index}",
            user_tokens=1 + index % 3,
            reply_content=f"a{index}",
            reply_tokens=reply_tokens,
        )

    outcomes = await asyncio.gather(*(one_exchange(index) for index in range(EXCHANGES)))
    successes = [o for o in outcomes if isinstance(o, Settlement)]
    held = [o for o in outcomes if isinstance(o, TokensHeld)]
    insufficient = [o for o in outcomes if isinstance(o, InsufficientTokens)]
    assert len(successes) + len(held) + len(insufficient) == EXCHANGES
    assert successes, "the limit pays for some exchanges"
    assert held, "holds refused some"
    # Held: payable with nothing held; insufficient: not payable even then.
    assert all(e.limit_milli - e.used_milli >= e.needed_milli > e.available_milli for e in held)
    assert all(e.reserved_milli > 0 for e in held)
    assert all(e.limit_milli - e.used_milli < e.needed_milli for e in insufficient)

    state = await worker_ledgers[1].get_chat(config.config_id, chat.chat_id)
    assert state.used_milli <= state.limit_milli == limit_milli
    assert state.reserved_milli == 0
    assert sum(s.charged_milli for s in successes) == state.used_milli
    assert all(s.clamped_milli == 0 for s in successes)
    page = await worker_ledgers[2].read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10_000))
    assert page.total == len(page.items) == 2 * len(successes)
    assert [m.is_user for m in page.items] == [True, False] * len(successes)
    assert sorted(m.message_id for m in page.items[1::2]) == sorted(
        s.ai_message.message_id for s in successes
    )
