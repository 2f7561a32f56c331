"""Export: a config's chats and messages in pages, every message once and in order, deleted chats only
on request, resumable from any record's cursor; on 10,000 chats the worker's memory stays flat."""

from __future__ import annotations

import asyncio
import random
import tracemalloc
from collections import Counter

import pytest
from redis.asyncio import Redis

from ledger import (
    ConfigRecord,
    ExportCursor,
    ExportedChat,
    ExportedMessage,
    Keyspace,
    Ledger,
    TenantStore,
    export,
)
from service.export import ndjson_pages
from tests.integration.helpers import reserve, settle

Record = ExportedChat | ExportedMessage


async def export_all(
    book: Ledger, config_id: str, cursor: ExportCursor | None = None, *, include_deleted: bool = False
) -> list[Record]:
    records: list[Record] = []
    while True:
        page = await book.export_page(config_id, cursor, include_deleted=include_deleted)
        records += page.records
        if page.next is None:
            return records
        cursor = page.next


def as_pairs(records: list[Record]) -> list[tuple[str, str]]:
    """(chat id, message id or '') of each record: what was exported, in order."""
    return [
        (r.chat.chat_id, "") if isinstance(r, ExportedChat) else (r.chat_id, r.message.message_id)
        for r in records
    ]


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages far smaller than a chat's history or the config, so every path between pages is taken."""
    monkeypatch.setattr(export, "CHATS_BATCH", 3)
    monkeypatch.setattr(export, "EXPORT_FIRST_MESSAGES", 2)
    monkeypatch.setattr(export, "EXPORT_MESSAGES_MAX", 3)


class TestExportPages:
    @pytest.mark.usefixtures("small_pages")
    async def test_every_message_once_in_order_and_resumable_anywhere(
        self, ledger: Ledger, tenants: TenantStore, config: ConfigRecord
    ) -> None:
        """Chats in creation order, each followed by its messages in order; a deleted chat only with
        include_deleted; another config's chat never; resuming from any record's cursor gives exactly
        the records after it."""
        other = await tenants.create_config(agent_name="Other", company_name="Co")
        await settle(ledger, await reserve(ledger, other, (await ledger.create_chat(other, 10**6)).chat_id),
                     charge_milli=1)  # fmt: skip
        expected: dict[str, list[str]] = {}
        deleted: set[str] = set()
        for n, exchanges in enumerate([0, 1, 4, 7, 2, 0, 3]):
            chat_id = (await ledger.create_chat(config, 10**9)).chat_id
            expected[chat_id] = []
            for _ in range(exchanges):
                settled = await settle(ledger, await reserve(ledger, config, chat_id), charge_milli=1_000)
                expected[chat_id] += [settled.user_message.message_id, settled.ai_message.message_id]
            if n in (1, 5):
                await ledger.delete_chat(config.config_id, chat_id)
                deleted.add(chat_id)

        for include_deleted in (False, True):
            records = await export_all(ledger, config.config_id, include_deleted=include_deleted)
            wanted = [
                pair
                for chat_id, ids in expected.items()
                if include_deleted or chat_id not in deleted
                for pair in [(chat_id, ""), *((chat_id, m) for m in ids)]
            ]
            assert as_pairs(records) == wanted
            for at, record in enumerate(records):
                rest = await export_all(
                    ledger, config.config_id, record.cursor, include_deleted=include_deleted
                )
                assert as_pairs(rest) == wanted[at + 1 :], at
        chats = [
            r.chat
            for r in await export_all(ledger, config.config_id, include_deleted=True)
            if isinstance(r, ExportedChat)
        ]
        assert {c.chat_id for c in chats if c.deleted} == deleted

    async def test_erased_chats_are_skipped_and_a_cursor_survives_its_chat(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A chat erased after the export passed its cursor, or before the export reached it, costs the
        export nothing: the rest comes as it would have."""
        chats = [(await ledger.create_chat(config, 10**6)).chat_id for _ in range(4)]
        first = await ledger.export_page(config.config_id)
        cursor = first.records[1].cursor  # the second chat's record
        await ledger.erase_chat(chats[1])
        await ledger.erase_chat(chats[2])
        rest = await export_all(ledger, config.config_id, cursor)
        assert as_pairs(rest) == [(chats[3], "")]

    def test_cursors_round_trip_and_junk_is_refused(self) -> None:
        cursor = ExportCursor(1_796_000_000_000_000, "0b7a3c1e-0000-4000-8000-000000000000", "1700-3")
        assert ExportCursor.parse(str(cursor)) == cursor
        for junk in [
            "",
            "x",
            "1.2.3",
            f"{cursor}\n",
            str(cursor).replace("1700-3", "17a-1"),
            "1" * 18 + ".x.+",
        ]:
            assert ExportCursor.parse(junk) is None, junk


async def fill_config(
    client: Redis, keyspace: Keyspace, book: Ledger, config: ConfigRecord, chats: int
) -> int:
    """`chats` chats of one config, each with a user message and a reply written straight to its stream
    (settle's layout): creating them through the API would take minutes. Returns the messages."""
    messages = 0
    for start in range(0, chats, 500):
        created = await asyncio.gather(
            *(book.create_chat(config, 10**6) for _ in range(min(500, chats - start)))
        )
        async with client.pipeline(transaction=False) as pipe:
            for n, chat in enumerate(created):
                for is_user in ("1", "0")[: 1 + (start + n) % 2]:
                    fields = {"u": is_user, "c": f"message {start + n} " * 8, "t": "9", "m": "0", "f": ""}
                    _ = pipe.xadd(keyspace.chat_messages(chat.chat_id), fields)  # type: ignore[arg-type]
                    messages += 1
            await pipe.execute()
    return messages


@pytest.mark.redis
@pytest.mark.slow
class TestExportAtScale:
    async def test_ten_thousand_chats_flat_memory_and_resumed(
        self, real_redis: Redis, keyspace: Keyspace
    ) -> None:
        """10,000 chats streamed as NDJSON: every chat and message once; the Python memory the export
        holds while streaming the last chats is no more than while streaming the first (it holds a page,
        not the config); and an export cut at a random line and resumed from its cursor gives the rest."""
        config = await TenantStore(real_redis, keyspace).create_config(agent_name="A", company_name="C")
        book = Ledger(real_redis, keyspace)
        await book.start()
        messages = await fill_config(real_redis, keyspace, book, config, 10_000)

        kinds: Counter[bytes] = Counter()
        last = b""
        peaks: list[int] = []
        tracemalloc.start()
        try:
            async for chunk in ndjson_pages(book, config.config_id, None, include_deleted=False):
                # Only counted, so what is measured is the export's own memory.
                for line in chunk.splitlines():
                    last = line.split(b'"', 4)[3]  # {"type":"<kind>",...
                    kinds[last] += 1
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.reset_peak()
        finally:
            tracemalloc.stop()
        assert (kinds[b"chat"], kinds[b"message"], last) == (10_000, messages, b"end")
        tenth = len(peaks) // 10
        assert max(peaks[-tenth:]) <= 1.5 * max(peaks[:tenth]) + 256 * 1024, (peaks[:tenth], peaks[-tenth:])

        full = await export_all(book, config.config_id)
        cut = random.Random(21).randrange(len(full))
        rest = await export_all(book, config.config_id, full[cut].cursor)
        assert as_pairs(full[: cut + 1] + rest) == as_pairs(full)
        assert len(set(as_pairs(full))) == len(full)
