"""Chats: create, read, top up, soft delete, list; and tenant isolation (design.md sections 3, 6, 7)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from ledger import (
    ChatDeleted,
    ChatNotFound,
    ChatState,
    ConfigRecord,
    HistoryQuery,
    Keyspace,
    Ledger,
    LimitTooLarge,
    TenantStore,
)
from ledger.limits import AMOUNT_MILLI_MAX
from tests.integration.helpers import chat_snapshot, reserve

ChatOperation = Callable[[Ledger, ConfigRecord, str], Awaitable[object]]


class TestCreateChat:
    async def test_returns_and_stores_the_new_chat(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A new chat has its limit, nothing used or reserved, and the config's names copied in."""
        before_ms = int(time.time() * 1000)
        chat = await ledger.create_chat(config, 1_000_000)
        assert chat.config_id == config.config_id
        assert (chat.limit_milli, chat.used_milli, chat.reserved_milli) == (1_000_000, 0, 0)
        assert (chat.agent_name, chat.company_name) == ("Agent", "Co")
        assert chat.deleted is False
        assert chat.deleted_ms == 0
        assert before_ms <= chat.created_ms <= int(time.time() * 1000)
        assert uuid.UUID(chat.chat_id).version == 4
        assert await ledger.get_chat(config.config_id, chat.chat_id) == chat

    async def test_zero_limit_is_allowed(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A chat may start with no tokens (api.md Part B 4: token_limit >= 0)."""
        chat = await ledger.create_chat(config, 0)
        assert (await ledger.get_chat(config.config_id, chat.chat_id)).limit_milli == 0

    async def test_names_are_copied_not_referenced(
        self, ledger: Ledger, tenants: TenantStore, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """The agent and company names are stored in the chat at creation (api.md Part B 11)."""
        config = await tenants.create_config(agent_name="Support Pro", company_name="Your Company Inc.")
        chat = await ledger.create_chat(config, 5)
        await redis_client.delete(keyspace.config_record(config.config_id))
        stored = await ledger.get_chat(config.config_id, chat.chat_id)
        assert (stored.agent_name, stored.company_name) == ("Support Pro", "Your Company Inc.")

    async def test_indexes_the_chat_under_its_config(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """The chat is in both by-config indexes, with the same creation score."""
        chat = await ledger.create_chat(config, 1)
        full = await redis_client.zscore(keyspace.config_chats(config.config_id), chat.chat_id)
        live = await redis_client.zscore(keyspace.config_live_chats(config.config_id), chat.chat_id)
        assert full is not None
        assert full == live


class TestGetChat:
    async def test_unknown_chat_is_not_found(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A well-formed id that names no chat raises ChatNotFound."""
        with pytest.raises(ChatNotFound):
            await ledger.get_chat(config.config_id, str(uuid.uuid4()))

    async def test_admin_reads_any_config(self, ledger: Ledger, config: ConfigRecord) -> None:
        """With config_id=None (the admin surface) the owner is not checked."""
        chat = await ledger.create_chat(config, 7)
        assert (await ledger.get_chat(None, chat.chat_id)).chat_id == chat.chat_id

    async def test_reads_deleted_chats(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A deleted chat can still be read, flagged as deleted."""
        chat = await ledger.create_chat(config, 7)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        stored = await ledger.get_chat(config.config_id, chat.chat_id)
        assert stored.deleted is True
        assert stored.deleted_ms > 0


class TestTopUp:
    async def test_adds_to_the_limit(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A top-up adds to the limit (PUT tokens adds, it does not set) and returns the chat."""
        chat = await ledger.create_chat(config, 1000)
        updated = await ledger.top_up(config.config_id, chat.chat_id, 500)
        assert updated.limit_milli == 1500
        assert updated == await ledger.get_chat(config.config_id, chat.chat_id)
        assert (await ledger.top_up(config.config_id, chat.chat_id, 1)).limit_milli == 1501

    async def test_keeps_used_and_reserved(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A top-up during an open hold changes only the limit."""
        chat = await ledger.create_chat(config, 200_000)
        reservation = await reserve(ledger, config, chat.chat_id)
        updated = await ledger.top_up(config.config_id, chat.chat_id, 1000)
        assert (updated.limit_milli, updated.used_milli) == (201_000, 0)
        assert updated.reserved_milli == reservation.granted_milli

    async def test_up_to_the_maximum(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A limit may reach exactly the maximum a chat may hold."""
        chat = await ledger.create_chat(config, AMOUNT_MILLI_MAX - 10)
        assert (await ledger.top_up(config.config_id, chat.chat_id, 10)).limit_milli == AMOUNT_MILLI_MAX

    async def test_over_the_maximum_is_refused(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """A top-up that would pass the maximum raises LimitTooLarge and changes nothing."""
        chat = await ledger.create_chat(config, AMOUNT_MILLI_MAX - 10)
        before = await chat_snapshot(redis_client, keyspace, chat.chat_id)
        with pytest.raises(LimitTooLarge) as raised:
            await ledger.top_up(config.config_id, chat.chat_id, 11)
        assert raised.value.max_milli == AMOUNT_MILLI_MAX
        assert await chat_snapshot(redis_client, keyspace, chat.chat_id) == before

    async def test_deleted_chat_takes_no_tokens(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A deleted chat refuses a top-up with ChatDeleted."""
        chat = await ledger.create_chat(config, 1000)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await ledger.top_up(config.config_id, chat.chat_id, 1)
        assert (await ledger.get_chat(config.config_id, chat.chat_id)).limit_milli == 1000


class TestDeleteChat:
    async def test_flags_the_chat(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Delete sets `deleted` and `deleted_ms` and returns the chat as it now is."""
        chat = await ledger.create_chat(config, 1000)
        deleted = await ledger.delete_chat(config.config_id, chat.chat_id)
        assert deleted.deleted is True
        assert deleted.deleted_ms >= chat.created_ms
        assert deleted.limit_milli == 1000
        assert deleted == await ledger.get_chat(config.config_id, chat.chat_id)

    async def test_second_delete_is_chat_deleted(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Deleting twice raises ChatDeleted and leaves the first deletion time alone."""
        chat = await ledger.create_chat(config, 1000)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        before = await chat_snapshot(redis_client, keyspace, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await ledger.delete_chat(config.config_id, chat.chat_id)
        assert await chat_snapshot(redis_client, keyspace, chat.chat_id) == before

    async def test_removes_nothing(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Soft delete keeps the history and the full index entry; only the live index drops the chat."""
        chat = await ledger.create_chat(config, 100_000)
        reservation = await reserve(ledger, config, chat.chat_id, completion_tokens_max=5)
        await ledger.settle(
            reservation, charge_milli=1000, user_content="q", user_tokens=1, reply_content="a", reply_tokens=1
        )
        await ledger.delete_chat(config.config_id, chat.chat_id)
        assert await redis_client.xlen(keyspace.chat_messages(chat.chat_id)) == 2
        assert await redis_client.zscore(keyspace.config_chats(config.config_id), chat.chat_id) is not None
        assert await redis_client.zscore(keyspace.config_live_chats(config.config_id), chat.chat_id) is None

    async def test_unknown_chat_is_not_found(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Deleting a chat that does not exist raises ChatNotFound."""
        with pytest.raises(ChatNotFound):
            await ledger.delete_chat(config.config_id, str(uuid.uuid4()))


async def _get(ledger: Ledger, config: ConfigRecord, chat_id: str) -> object:
    return await ledger.get_chat(config.config_id, chat_id)


async def _top_up(ledger: Ledger, config: ConfigRecord, chat_id: str) -> object:
    return await ledger.top_up(config.config_id, chat_id, 1000)


async def _delete(ledger: Ledger, config: ConfigRecord, chat_id: str) -> object:
    return await ledger.delete_chat(config.config_id, chat_id)


async def _reserve(ledger: Ledger, config: ConfigRecord, chat_id: str) -> object:
    return await reserve(ledger, config, chat_id)


async def _history(ledger: Ledger, config: ConfigRecord, chat_id: str) -> object:
    return await ledger.read_history(config.config_id, chat_id, HistoryQuery(limit=10))


async def _history_after(ledger: Ledger, config: ConfigRecord, chat_id: str) -> object:
    return await ledger.read_history(config.config_id, chat_id, HistoryQuery(limit=10, after="0-0"))


CHAT_OPERATIONS = [
    pytest.param(_get, id="get_chat"),
    pytest.param(_top_up, id="top_up"),
    pytest.param(_delete, id="delete_chat"),
    pytest.param(_reserve, id="reserve"),
    pytest.param(_history, id="read_history"),
    pytest.param(_history_after, id="read_history_after"),
]


class TestTenantIsolation:
    @pytest.mark.parametrize("operation", CHAT_OPERATIONS)
    async def test_another_configs_chat_is_not_found(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        tenants: TenantStore,
        redis_client: Redis,
        keyspace: Keyspace,
        operation: ChatOperation,
    ) -> None:
        """A config touching another config's chat gets ChatNotFound, and the chat is unchanged."""
        chat = await ledger.create_chat(config, 500_000)
        await ledger.settle(
            await reserve(ledger, config, chat.chat_id),
            charge_milli=3000,
            user_content="q",
            user_tokens=1,
            reply_content="a",
            reply_tokens=1,
        )
        intruder = await tenants.create_config(agent_name="Other", company_name="Else")
        before = await chat_snapshot(redis_client, keyspace, chat.chat_id)
        with pytest.raises(ChatNotFound):
            await operation(ledger, intruder, chat.chat_id)
        assert await chat_snapshot(redis_client, keyspace, chat.chat_id) == before

    @pytest.mark.parametrize("operation", CHAT_OPERATIONS)
    async def test_another_configs_deleted_chat_is_not_found(
        self, ledger: Ledger, config: ConfigRecord, tenants: TenantStore, operation: ChatOperation
    ) -> None:
        """Another config cannot even learn that a chat was deleted: it reads as not found."""
        chat = await ledger.create_chat(config, 500_000)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        intruder = await tenants.create_config(agent_name="Other", company_name="Else")
        with pytest.raises(ChatNotFound):
            await operation(ledger, intruder, chat.chat_id)

    @pytest.mark.parametrize("operation", CHAT_OPERATIONS)
    async def test_unknown_chat_is_not_found(
        self, ledger: Ledger, config: ConfigRecord, operation: ChatOperation
    ) -> None:
        """Every operation on a chat id that exists nowhere raises ChatNotFound."""
        with pytest.raises(ChatNotFound):
            await operation(ledger, config, str(uuid.uuid4()))

    async def test_listing_shows_only_own_chats(
        self, ledger: Ledger, config: ConfigRecord, tenants: TenantStore
    ) -> None:
        """Each config lists its own chats and no other config's."""
        other = await tenants.create_config(agent_name="Other", company_name="Else")
        mine = await ledger.create_chat(config, 1)
        theirs = await ledger.create_chat(other, 1)
        for include_deleted in (False, True):
            page = await ledger.list_chats(
                config.config_id, offset=0, limit=10, include_deleted=include_deleted
            )
            assert [chat.chat_id for chat in page.items] == [mine.chat_id]
            assert page.total == 1
            page = await ledger.list_chats(
                other.config_id, offset=0, limit=10, include_deleted=include_deleted
            )
            assert [chat.chat_id for chat in page.items] == [theirs.chat_id]


async def _create_chats(ledger: Ledger, config: ConfigRecord, count: int) -> list[ChatState]:
    """`count` chats with distinct creation milliseconds, oldest first."""
    chats = []
    for index in range(count):
        chats.append(await ledger.create_chat(config, 1000 * (index + 1)))
        await asyncio.sleep(0.002)
    assert len({chat.created_ms for chat in chats}) == count
    return chats


async def _index_score_now(redis: Redis, keyspace: Keyspace, chat: ChatState) -> tuple[float, int]:
    """The index score of a chat created just now, and the index's score units per millisecond: the
    index's time unit is the ledger's choice, so orphan entries are written in whatever unit it uses."""
    score = await redis.zscore(keyspace.config_chats(chat.config_id), chat.chat_id)
    assert score is not None
    units_per_ms = round(score / chat.created_ms)
    assert units_per_ms in (1, 1000), "the index is scored in milliseconds or microseconds"
    return score, units_per_ms


def _ids(chats: list[ChatState]) -> list[str]:
    return [chat.chat_id for chat in chats]


class TestListChats:
    async def test_oldest_first_with_total(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Chats are listed by creation time, oldest first, and total counts them all."""
        chats = await _create_chats(ledger, config, 5)
        page = await ledger.list_chats(config.config_id, offset=0, limit=10)
        assert page.items == chats
        assert page.total == 5

    async def test_offset_and_limit(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Every (offset, limit) window is the matching slice, and total is independent of the page."""
        chats = await _create_chats(ledger, config, 7)
        for offset in range(9):
            for limit in (1, 2, 3, 7, 10):
                page = await ledger.list_chats(config.config_id, offset=offset, limit=limit)
                assert _ids(page.items) == _ids(chats[offset : offset + limit]), (offset, limit)
                assert page.total == 7

    async def test_empty_config(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A config without chats lists nothing."""
        page = await ledger.list_chats(config.config_id, offset=0, limit=10)
        assert (page.items, page.total) == ([], 0)

    async def test_deleted_chats_only_when_asked(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Deleted chats are left out of the listing unless include_deleted is set."""
        chats = await _create_chats(ledger, config, 4)
        await ledger.delete_chat(config.config_id, chats[1].chat_id)
        await ledger.delete_chat(config.config_id, chats[3].chat_id)
        live = await ledger.list_chats(config.config_id, offset=0, limit=10)
        assert _ids(live.items) == _ids([chats[0], chats[2]])
        assert live.total == 2
        every = await ledger.list_chats(config.config_id, offset=0, limit=10, include_deleted=True)
        assert _ids(every.items) == _ids(chats)
        assert every.total == 4
        assert [chat.deleted for chat in every.items] == [False, True, False, True]

    async def test_repairs_a_deleted_chat_left_in_the_live_index(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """A crash between delete's two steps leaves the chat in the live index: listing drops it."""
        chats = await _create_chats(ledger, config, 3)
        await ledger.delete_chat(config.config_id, chats[1].chat_id)
        live_index = keyspace.config_live_chats(config.config_id)
        score = await redis_client.zscore(keyspace.config_chats(config.config_id), chats[1].chat_id)
        assert score is not None
        await redis_client.zadd(live_index, {chats[1].chat_id: score})

        page = await ledger.list_chats(config.config_id, offset=0, limit=10)
        assert _ids(page.items) == _ids([chats[0], chats[2]])
        assert page.total == 2
        assert await redis_client.zscore(live_index, chats[1].chat_id) is None
        every = await ledger.list_chats(config.config_id, offset=0, limit=10, include_deleted=True)
        assert _ids(every.items) == _ids(chats)

    async def test_repaired_page_is_full(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """After a repair the page is read again, so it still holds `limit` chats."""
        chats = await _create_chats(ledger, config, 4)
        await ledger.delete_chat(config.config_id, chats[0].chat_id)
        await redis_client.zadd(keyspace.config_live_chats(config.config_id), {chats[0].chat_id: 1})
        page = await ledger.list_chats(config.config_id, offset=0, limit=2)
        assert _ids(page.items) == _ids(chats[1:3])
        assert page.total == 3

    @pytest.mark.parametrize("include_deleted", [False, True])
    async def test_repairs_an_old_orphan_index_entry(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        redis_client: Redis,
        keyspace: Keyspace,
        include_deleted: bool,
    ) -> None:
        """An index entry older than the grace whose chat never got written is skipped and removed."""
        chats = await _create_chats(ledger, config, 2)
        now_score, units_per_ms = await _index_score_now(redis_client, keyspace, chats[-1])
        orphan = str(uuid.uuid4())
        old_score = now_score - 2 * ledger.limits.orphan_grace_ms * units_per_ms
        for index in (keyspace.config_chats(config.config_id), keyspace.config_live_chats(config.config_id)):
            await redis_client.zadd(index, {orphan: old_score})

        page = await ledger.list_chats(config.config_id, offset=0, limit=10, include_deleted=include_deleted)
        assert _ids(page.items) == _ids(chats)
        assert page.total == 2
        index = (
            keyspace.config_chats(config.config_id)
            if include_deleted
            else keyspace.config_live_chats(config.config_id)
        )
        assert await redis_client.zscore(index, orphan) is None

    async def test_keeps_a_young_orphan(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """An index entry within the grace may be a creation in progress: skipped, but kept."""
        chat = await ledger.create_chat(config, 1)
        now_score, _units_per_ms = await _index_score_now(redis_client, keyspace, chat)
        orphan = str(uuid.uuid4())
        live_index = keyspace.config_live_chats(config.config_id)
        await redis_client.zadd(live_index, {orphan: now_score + 1})
        page = await ledger.list_chats(config.config_id, offset=0, limit=10)
        assert _ids(page.items) == [chat.chat_id]
        assert await redis_client.zscore(live_index, orphan) is not None
