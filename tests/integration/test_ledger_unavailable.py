"""Every public Ledger method turns a Redis failure into LedgerUnavailable, by one mechanism
(`wrap_redis_errors`), so `service/` never sees a Redis exception."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import redis.exceptions

from ledger import (
    ConfigRecord,
    Durability,
    HistoryQuery,
    Keyspace,
    Ledger,
    LedgerUnavailable,
    RedisClient,
    Reservation,
    TenantStore,
    connect,
)
from tests.redis_servers import free_ports

CHAT = str(uuid.uuid4())
CONFIG = ConfigRecord(config_id=str(uuid.uuid4()), agent_name="A", company_name="C")
HOLD = Reservation(
    chat_id=CHAT, reservation_id="hold", granted_milli=1, prompt_milli=1, completion_tokens_max=1, context=[]
)

# One call of every public method of Ledger, by name.
CALLS: dict[str, Callable[[Ledger], Awaitable[object]]] = {
    "start": lambda book: book.start(),
    "ready": lambda book: book.ready(),
    "create_chat": lambda book: book.create_chat(CONFIG, 1000),
    "get_chat": lambda book: book.get_chat(None, CHAT),
    "top_up": lambda book: book.top_up(CONFIG.config_id, CHAT, 1000),
    "delete_chat": lambda book: book.delete_chat(CONFIG.config_id, CHAT),
    "restore_chat": lambda book: book.restore_chat(CHAT),
    "inspect_chat": lambda book: book.inspect_chat(CHAT),
    "list_chats": lambda book: book.list_chats(CONFIG.config_id, offset=0, limit=10),
    "read_journal": lambda book: book.read_journal(CHAT),
    "reconcile": lambda book: book.reconcile(CHAT),
    "erase_chat": lambda book: book.erase_chat(CHAT),
    "erase_config": lambda book: book.erase_config(CONFIG.config_id),
    "config_exists": lambda book: book.config_exists(CONFIG.config_id),
    "export_page": lambda book: book.export_page(CONFIG.config_id),
    "erase_deleted_before": lambda book: book.erase_deleted_before(0, chats_max=10),
    "retention_turn": lambda book: book.retention_turn("worker", 1000),
    "backfill_deleted_indexes": lambda book: book.backfill_deleted_indexes(),
    "reserve": lambda book: book.reserve(
        CONFIG, CHAT, prompt_tokens=1, completion_tokens_max=1, history_tokens_max=10, history_count_max=2
    ),
    "settle": lambda book: book.settle(
        HOLD, charge_milli=1, user_content="q", user_tokens=1, reply_content="a", reply_tokens=1
    ),
    "void": lambda book: book.void(HOLD),
    "read_history": lambda book: book.read_history(None, CHAT, HistoryQuery(limit=10)),
    "confirm_durable": lambda book: book.confirm_durable(CHAT),
}


def _public_methods(cls: type) -> set[str]:
    return {name for name, member in inspect.getmembers(cls) if not name.startswith("_") and callable(member)}


@pytest_asyncio.fixture
async def nowhere() -> AsyncIterator[RedisClient]:
    """A client of a port nothing listens on: every command fails to connect. Durable, so the writes'
    own path (ledger/durable.py) is covered too, and confirm_durable has something to do."""
    (port,) = free_ports(1)
    client = connect(f"redis://127.0.0.1:{port}/0", durability=Durability(1, 100))
    try:
        yield client
    finally:
        await client.aclose()


class TestEveryMethodIsWrapped:
    def test_every_public_method_is_called_below(self) -> None:
        """The list of calls is the whole public surface, so a new method cannot escape these tests."""
        assert _public_methods(Ledger) == set(CALLS)

    @pytest.mark.parametrize("name", sorted(CALLS))
    def test_each_carries_wrap_redis_errors(self, name: str) -> None:
        """One mechanism: each public method is the wrapper, whose original is its `__wrapped__`."""
        assert inspect.iscoroutinefunction(getattr(Ledger, name).__wrapped__)

    @pytest.mark.parametrize("name", sorted(CALLS))
    async def test_a_redis_failure_is_ledger_unavailable(
        self, nowhere: RedisClient, keyspace: Keyspace, name: str
    ) -> None:
        """With Redis unreachable, each method raises LedgerUnavailable, the Redis error as its cause."""
        book = Ledger(nowhere, keyspace)
        with pytest.raises(LedgerUnavailable) as raised:
            await CALLS[name](book)
        assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
        assert raised.value.code == "store_unavailable"

    async def test_the_tenant_store_too(self, nowhere: RedisClient, keyspace: Keyspace) -> None:
        """TenantStore's methods, the rate limiter's script included, fail the same way."""
        tenants = TenantStore(nowhere, keyspace)
        with pytest.raises(LedgerUnavailable):
            await tenants.list_config_ids()
        with pytest.raises(LedgerUnavailable):
            await tenants.rate_limit("0" * 64, 1.0, 1)
