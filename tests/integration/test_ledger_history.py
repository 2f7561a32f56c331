"""History pages: offsets equal to list slices at any depth, cursors, and access checks (design.md 6)."""

from __future__ import annotations

import uuid

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
    StoredMessage,
    TenantStore,
    parse_message_id,
)
from ledger.history import make_message
from ledger.limits import HISTORY_SKIP_CHUNK
from tests.integration.helpers import reserve, settle

# Deep enough that an offset walk takes several HISTORY_SKIP_CHUNK steps from either end; odd, so the two
# walking directions meet at an uneven middle.
MESSAGE_COUNT = 2 * HISTORY_SKIP_CHUNK + 301


async def write_history(redis: Redis, keyspace: Keyspace, chat_id: str, count: int) -> list[StoredMessage]:
    """Append `count` messages straight to the stream, with the fields settle writes, in one pipeline."""
    fields = []
    for n in range(count):
        is_user = n % 2 == 0
        fields.append(
            {
                "u": "1" if is_user else "0",
                "c": f"message {n}",
                "t": str(n % 7),
                "m": "0" if is_user else str(n),
                "f": "" if is_user else "e",
            }
        )
    async with redis.pipeline(transaction=False) as pipe:
        for entry in fields:
            _ = pipe.xadd(keyspace.chat_messages(chat_id), entry)  # type: ignore[arg-type]
        entry_ids: list[str] = await pipe.execute()
    return [
        make_message(
            entry_id,
            is_user=entry["u"] == "1",
            content=entry["c"],
            tokens=int(entry["t"]),
            charged_milli=int(entry["m"]),
            flags=entry["f"],
        )
        for entry_id, entry in zip(entry_ids, fields, strict=True)
    ]


def _offsets(total: int) -> list[int]:
    chunk = HISTORY_SKIP_CHUNK
    points = {0, 1, 2, chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1, total // 2, total // 2 + 1}
    points |= {
        total - 600,
        total - chunk - 1,
        total - chunk,
        total - 11,
        total - 10,
        total - 1,
        total,
        total + 7,
    }
    return sorted(point for point in points if point >= 0)


class TestOffsetPages:
    async def test_every_page_is_the_slice(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """For offsets at every depth (both ends, chunk edges, past the end) a page equals the list slice."""
        chat = await ledger.create_chat(config, 1000)
        messages = await write_history(redis_client, keyspace, chat.chat_id, MESSAGE_COUNT)
        checked = 0
        for offset in _offsets(MESSAGE_COUNT):
            for limit in (1, 10, 11, HISTORY_SKIP_CHUNK + 3, 2 * MESSAGE_COUNT):
                page = await ledger.read_history(
                    config.config_id, chat.chat_id, HistoryQuery(limit=limit, offset=offset)
                )
                assert page.total == MESSAGE_COUNT
                assert page.items == messages[offset : offset + limit], (offset, limit)
                checked += 1
        assert checked > 50

    async def test_whole_history_in_one_page(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """One large page returns every message oldest first, decoded field by field."""
        chat = await ledger.create_chat(config, 1000)
        messages = await write_history(redis_client, keyspace, chat.chat_id, 25)
        page = await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=100))
        assert page.items == messages
        assert [message.message_id for message in page.items] == sorted(m.message_id for m in messages)
        assert page.items[1].flags == "e"
        assert page.items[1].charged_milli == 1

    async def test_empty_chat(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A chat without messages has an empty first page and a total of zero."""
        chat = await ledger.create_chat(config, 1000)
        page = await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        assert (page.items, page.total) == ([], 0)

    async def test_settled_exchanges_read_back(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Pairs written by settle page like any others: user, reply, user, reply."""
        chat = await ledger.create_chat(config, 10_000_000)
        for n in range(6):
            reservation = await reserve(ledger, config, chat.chat_id, completion_tokens_max=1)
            await settle(ledger, reservation, charge_milli=n, user=f"q{n}", reply=f"a{n}")
        page = await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=4, offset=3))
        assert [message.content for message in page.items] == ["a1", "q2", "a2", "q3"]
        assert page.total == 12


class TestCursorPages:
    @pytest.mark.parametrize("padded", [True, False], ids=["message-id", "raw-stream-id"])
    async def test_after_and_before(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        redis_client: Redis,
        keyspace: Keyspace,
        padded: bool,
    ) -> None:
        """`after` returns the next messages and `before` the previous ones, both oldest first."""
        chat = await ledger.create_chat(config, 1000)
        messages = await write_history(redis_client, keyspace, chat.chat_id, 40)

        def cursor(message: StoredMessage) -> str:
            raw = parse_message_id(message.message_id)
            assert raw is not None
            return message.message_id if padded else raw

        for index in (0, 1, 17, 38, 39):
            for limit in (1, 5, 50):
                after = await ledger.read_history(
                    config.config_id, chat.chat_id, HistoryQuery(limit=limit, after=cursor(messages[index]))
                )
                assert after.items == messages[index + 1 : index + 1 + limit], (index, limit)
                assert after.total == 40
                before = await ledger.read_history(
                    config.config_id, chat.chat_id, HistoryQuery(limit=limit, before=cursor(messages[index]))
                )
                assert before.items == messages[max(0, index - limit) : index], (index, limit)

    async def test_walking_forward_visits_every_message_once(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Following `after` from the start, page by page, yields the whole history exactly once."""
        chat = await ledger.create_chat(config, 1000)
        messages = await write_history(redis_client, keyspace, chat.chat_id, 53)
        seen: list[StoredMessage] = []
        cursor = "0-0"
        while True:
            page = await ledger.read_history(
                config.config_id, chat.chat_id, HistoryQuery(limit=10, after=cursor)
            )
            if not page.items:
                break
            seen.extend(page.items)
            cursor = page.items[-1].message_id
        assert seen == messages

    async def test_walking_backward_visits_every_message_once(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """Following `before` from the newest message back yields the whole history exactly once."""
        chat = await ledger.create_chat(config, 1000)
        messages = await write_history(redis_client, keyspace, chat.chat_id, 53)
        pages: list[list[StoredMessage]] = []
        cursor = "99999999999999-0"
        while True:
            page = await ledger.read_history(
                config.config_id, chat.chat_id, HistoryQuery(limit=10, before=cursor)
            )
            if not page.items:
                break
            pages.insert(0, page.items)
            cursor = page.items[0].message_id
        assert [message for page in pages for message in page] == messages


class TestHistoryAccess:
    async def _chat_with_history(
        self, ledger: Ledger, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> ChatState:
        chat = await ledger.create_chat(config, 1000)
        await write_history(redis_client, keyspace, chat.chat_id, 4)
        return chat

    @pytest.mark.parametrize(
        "query",
        [HistoryQuery(limit=10), HistoryQuery(limit=10, after="0-0"), HistoryQuery(limit=10, before="9-0")],
    )
    async def test_deleted_chat(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        redis_client: Redis,
        keyspace: Keyspace,
        query: HistoryQuery,
    ) -> None:
        """A deleted chat's history is not served: ChatDeleted in every mode."""
        chat = await self._chat_with_history(ledger, config, redis_client, keyspace)
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await ledger.read_history(config.config_id, chat.chat_id, query)

    async def test_wrong_config(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        tenants: TenantStore,
        redis_client: Redis,
        keyspace: Keyspace,
    ) -> None:
        """Another config reading the history gets ChatNotFound."""
        chat = await self._chat_with_history(ledger, config, redis_client, keyspace)
        other = await tenants.create_config(agent_name="Other", company_name="Else")
        with pytest.raises(ChatNotFound):
            await ledger.read_history(other.config_id, chat.chat_id, HistoryQuery(limit=10))

    async def test_unknown_chat(self, ledger: Ledger, config: ConfigRecord) -> None:
        """A chat id that names nothing reads as ChatNotFound."""
        with pytest.raises(ChatNotFound):
            await ledger.read_history(config.config_id, str(uuid.uuid4()), HistoryQuery(limit=10))
