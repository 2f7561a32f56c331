"""Small helpers shared by the integration tests: a whole exchange and a raw look at a chat."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from ledger import ConfigRecord, IdempotencyKey, Keyspace, Ledger, Reservation, Settlement

# Workers the concurrency tests simulate (the `worker_ledgers` fixture, tests/integration/conftest.py).
WORKERS = 3


async def reserve(
    ledger: Ledger,
    config: ConfigRecord,
    chat_id: str,
    *,
    prompt_tokens: int = 10,
    completion_tokens_max: int = 100,
    history_tokens_max: int = 0,
    history_count_max: int = 0,
    idempotency: IdempotencyKey | None = None,
) -> Reservation:
    """A reserve with small defaults and no history context unless asked for."""
    return await ledger.reserve(
        config,
        chat_id,
        prompt_tokens=prompt_tokens,
        completion_tokens_max=completion_tokens_max,
        history_tokens_max=history_tokens_max,
        history_count_max=history_count_max,
        idempotency=idempotency,
    )


async def settle(
    ledger: Ledger,
    reservation: Reservation,
    *,
    charge_milli: int,
    user: str = "question",
    reply: str = "answer",
    user_tokens: int = 1,
    reply_tokens: int = 1,
    flags: str = "",
) -> Settlement:
    return await ledger.settle(
        reservation,
        charge_milli=charge_milli,
        user_content=user,
        user_tokens=user_tokens,
        reply_content=reply,
        reply_tokens=reply_tokens,
        flags=flags,
    )


async def chat_snapshot(redis: Redis, keyspace: Keyspace, chat_id: str) -> dict[str, object]:
    """Everything stored for one chat, to prove an operation changed nothing."""
    return {
        "meta": await redis.hgetall(keyspace.chat_meta(chat_id)),
        "msgs": await redis.xrange(keyspace.chat_messages(chat_id)),
        "res": await redis.zrange(keyspace.chat_deadlines(chat_id), 0, -1, withscores=True),
        "resv": await redis.hgetall(keyspace.chat_reservations(chat_id)),
        "journal": await redis.xrange(keyspace.chat_journal(chat_id)),
        "done": await redis.get(keyspace.chat_resolved(chat_id)),
    }


async def meta_field(redis: Redis, keyspace: Keyspace, chat_id: str, field: str) -> int:
    return int(cast(str, await redis.hget(keyspace.chat_meta(chat_id), field)))


async def numbered_exchanges(ledger: Ledger, config: ConfigRecord, chat_id: str, exchanges: int) -> None:
    """`exchanges` settled exchanges; the n-th question costs n+1 tokens and its reply 1."""
    for n in range(exchanges):
        held = await reserve(ledger, config, chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(ledger, held, charge_milli=1, user=f"q{n}", reply=f"a{n}", user_tokens=n + 1)


async def voided_context(
    ledger: Ledger, config: ConfigRecord, chat_id: str, count: int = 6, tokens_max: int = 10_000
) -> Reservation:
    """The context a reserve would give now, its hold voided at once."""
    held = await reserve(
        ledger, config, chat_id, prompt_tokens=1, history_tokens_max=tokens_max, history_count_max=count
    )
    await ledger.void(held)
    return held
