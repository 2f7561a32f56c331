"""Journal folding: old entries are added up into a checkpoint by the script that writes the next entry,
so the journal's memory is bounded per chat and yet reconciles to the milli-token at every moment, on a
real redis-server. Settled and voided holds are forgotten at once, and a replayed settle or void is
still recognised."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import (
    ConfigRecord,
    Keyspace,
    Ledger,
    LedgerLimits,
    RedisClient,
    Reservation,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationError,
    TenantStore,
    connect,
    scripts,
)
from ledger.limits import JOURNAL_FOLD_BATCH, JOURNAL_KEPT
from tests.integration.helpers import reserve, settle
from tests.redis_servers import RedisServer

KEYS = Keyspace("clfold")
# Folds every few entries, so a short sequence of operations folds many times.
SMALL_KEPT, SMALL_BATCH = 3, 2


@pytest.fixture
def small_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripts rebuilt with a tiny journal window and a tiny list of resolved holds."""
    monkeypatch.setattr(scripts, "JOURNAL_KEPT", SMALL_KEPT)
    monkeypatch.setattr(scripts, "JOURNAL_FOLD_BATCH", SMALL_BATCH)
    monkeypatch.setattr(scripts, "RESOLVED_BYTES", 80)
    monkeypatch.setattr(
        scripts, "_SOURCES", {name: scripts.script_source(name) for name in scripts.SCRIPT_NAMES}
    )


class Model:
    """What the counters must be: limit and used move only as the operations say; reserved is the
    holds still open."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.open: dict[str, Reservation] = {}
        # Oldest first: the list of resolved holds remembers the newest ones.
        self.resolved: list[tuple[Reservation, type[Exception]]] = []


Op = tuple[str, int]
OPS = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "settle", "void", "top_up", "abandon", "replay"]), st.integers(0, 10**6)
    ),
    min_size=1,
    max_size=40,
)


async def apply(
    book: Ledger, short: Ledger, config: ConfigRecord, chat_id: str, model: Model, op: Op
) -> None:
    name, n = op
    if name == "reserve" and len(model.open) < 5:
        hold = await reserve(book, config, chat_id, prompt_tokens=1 + n % 7, completion_tokens_max=1 + n % 50)
        model.open[hold.reservation_id] = hold
    elif name in ("settle", "void") and model.open:
        hold = model.open.pop(sorted(model.open)[n % len(model.open)])
        if name == "settle":
            settled = await settle(book, hold, charge_milli=n % (2 * hold.granted_milli + 1))
            model.used += settled.charged_milli
            model.resolved.append((hold, ReservationAlreadySettled))
        else:
            await book.void(hold)
            model.resolved.append((hold, ReservationAlreadyVoided))
    elif name == "top_up":
        await book.top_up(config.config_id, chat_id, 1 + n)
        model.limit += 1 + n
    elif name == "abandon":
        # A dead worker's hold: its deadline passes, and the next script on the chat reaps it.
        await reserve(short, config, chat_id, prompt_tokens=1, completion_tokens_max=1)
        await asyncio.sleep(0.005)
    elif name == "replay" and model.resolved:
        # The newest two are in the list whatever its size; an older one may have left it, and is then
        # not found: refused either way, and nothing changes (check() after every step).
        at = n % len(model.resolved)
        hold, refusal = model.resolved[at]
        recent = at >= len(model.resolved) - 2
        with pytest.raises(refusal if recent else ReservationError):
            await (book.void(hold) if n % 2 else settle(book, hold, charge_milli=1))


async def check(book: Ledger, chat_id: str, model: Model, kept_max: int) -> None:
    """The journal (checkpoint and entries) adds up to the counters, which are the model's; the journal
    never holds more than its window, plus one entry per open hold (a reserve's entry does not fold)."""
    result = await book.reconcile(chat_id)
    assert result.ok, result
    chat = result.chat
    assert (chat.limit_milli, chat.used_milli) == (model.limit, model.used)
    assert chat.reserved_milli == sum(hold.granted_milli for hold in model.open.values())
    assert await book.redis.xlen(KEYS.chat_journal(chat_id)) < kept_max + len(model.open)


async def scenario(url: str, ops: list[Op]) -> int:
    client = connect(url)
    try:
        config = await TenantStore(client, KEYS).create_config(agent_name="A", company_name="C")
        book = Ledger(client, KEYS)
        short = Ledger(client, KEYS, LedgerLimits(reservation_ttl_ms=1))
        await book.start()
        chat_id = (await book.create_chat(config, 10**7)).chat_id
        model = Model(10**7)
        for op in ops:
            await apply(book, short, config, chat_id, model, op)
            await check(book, chat_id, model, SMALL_KEPT + SMALL_BATCH)
        return int(await client.hget(KEYS.chat_meta(chat_id), "jn") or 0)
    finally:
        await client.aclose()


@pytest.mark.redis
@pytest.mark.slow
class TestFolding:
    @pytest.mark.usefixtures("small_folds")
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=OPS)
    def test_reconciles_at_every_moment_of_the_folding(
        self, redis_server: RedisServer, ops: list[Op]
    ) -> None:
        """Any interleaving of reserves, settles (clamped or not), voids, top-ups, expiries and replays
        reconciles exactly after every step, while the journal folds every few entries; replayed
        settles and voids are refused as already resolved however old they are in the list."""
        asyncio.run(scenario(redis_server.url, ops))

    @pytest.mark.usefixtures("small_folds")
    def test_a_long_sequence_folds(self, redis_server: RedisServer) -> None:
        """The property above is not vacuous: a long sequence folds most of its entries."""
        rng = random.Random(7)
        ops = [(rng.choice(["reserve", "settle", "void", "top_up"]), rng.randrange(10**6)) for _ in range(60)]
        assert asyncio.run(scenario(redis_server.url, ops)) > 20

    def test_a_folded_journal_keeps_one_node_of_trimmed_bytes(self, redis_server: RedisServer) -> None:
        """A fold trims the entries it folded, and a stream node keeps its bytes until its last entry goes:
        over many folds the journal stays within two nodes (4 KB each, Redis's default), where a journal
        never trimmed would grow by an entry's bytes every balance move."""
        asyncio.run(journal_bytes(redis_server.url))

    def test_ten_thousand_exchanges_reconcile(self, redis_server: RedisServer) -> None:
        """A chat of 10,000 exchanges, with voids and top-ups among them, at the real window: the
        journal stays within it and reconciles exactly at every thousandth exchange and at the end."""
        asyncio.run(ten_thousand(redis_server.url))


async def _chat(client: RedisClient) -> tuple[Ledger, ConfigRecord, str]:
    """A started ledger, a config and a chat of 10^12 tokens on it."""
    config = await TenantStore(client, KEYS).create_config(agent_name="A", company_name="C")
    book = Ledger(client, KEYS)
    await book.start()
    return book, config, (await book.create_chat(config, 10**12)).chat_id


async def journal_bytes(url: str) -> None:
    client = connect(url)
    try:
        book, config, chat_id = await _chat(client)
        largest = 0
        for _ in range(400):
            hold = await reserve(book, config, chat_id, prompt_tokens=5, completion_tokens_max=20)
            await settle(book, hold, charge_milli=1_000)
            largest = max(largest, await client.memory_usage(KEYS.chat_journal(chat_id), samples=0) or 0)
        assert int(await client.hget(KEYS.chat_meta(chat_id), "jn") or 0) > 700
        assert largest <= 2 * 4096 + 2048
    finally:
        await client.aclose()


async def ten_thousand(url: str) -> None:
    client = connect(url)
    try:
        book, config, chat_id = await _chat(client)
        model = Model(10**12)
        rng = random.Random(10_000)

        async def exchange(n: int) -> None:
            hold = await reserve(book, config, chat_id, prompt_tokens=5, completion_tokens_max=20)
            if n % 17 == 0:
                await book.void(hold)
                return
            charged = (await settle(book, hold, charge_milli=rng.randrange(30_000))).charged_milli
            model.used += charged  # after the await: `+=` across it would lose concurrent updates

        for start in range(0, 10_000, 100):
            await asyncio.gather(*(exchange(n) for n in range(start, start + 100)))
            await book.top_up(config.config_id, chat_id, 1_000)
            model.limit += 1_000
            if (start + 100) % 1000 == 0:
                await check(book, chat_id, model, JOURNAL_KEPT + JOURNAL_FOLD_BATCH)
        result = await book.reconcile(chat_id)
        assert result.entries == 1 + 2 * 10_000 + 100  # create, reserve and settle or void, top-ups
    finally:
        await client.aclose()


class TestFoldingOnEveryBackend:
    async def test_checkpoint_then_entries(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Past the window the journal starts with its checkpoint, whose sums and the entries after it
        reconcile; the entries kept are the newest, one by one; no settled hold leaves a record."""
        chat_id = (await ledger.create_chat(config, 10**9)).chat_id
        for n in range(100):
            hold = await reserve(ledger, config, chat_id)
            await (settle(ledger, hold, charge_milli=1_000 + n) if n % 3 else ledger.void(hold))
        journal = await ledger.read_journal(chat_id, count=1000)
        assert journal[0].op == "checkpoint"
        assert JOURNAL_KEPT <= len(journal) - 1 < JOURNAL_KEPT + JOURNAL_FOLD_BATCH
        ids = [tuple(map(int, entry.entry_id.split("-"))) for entry in journal]
        assert ids == sorted(ids)  # the checkpoint names the newest entry folded: just before the rest
        result = await ledger.reconcile(chat_id)
        assert result.ok
        assert result.entries == 1 + 2 * 100
        assert result.used_sum_milli == sum(1_000 + n for n in range(100) if n % 3)
        # Only the member that keeps the set from emptying: no settled or voided hold is left.
        assert await ledger.redis.zrange(ledger.keys.chat_deadlines(chat_id), 0, -1) == ["~"]
        resolved = await ledger.redis.hgetall(ledger.keys.chat_reservations(chat_id))
        assert list(resolved) == ["~"]
