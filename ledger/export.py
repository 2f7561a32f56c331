"""Export: a config's chats and their messages, a bounded page at a time, resumable from a cursor
(design.md section 12).

Part of class Ledger (ledger/ledger.py). A page is at most CHATS_BATCH chats with up to
EXPORT_FIRST_MESSAGES messages each, or one chat's next EXPORT_MESSAGES_MAX messages, so whoever streams
the pages holds a bounded amount whatever the config's size. Chats come in the order of the config's
index (creation time, then id), messages in stream order; a chat erased while the export runs is
skipped, a message written meanwhile to a chat not yet passed is exported.
"""

from __future__ import annotations

import re
from typing import cast

import msgspec

from ledger.chats import chat_from_hash
from ledger.connection import RedisClient
from ledger.errors import wrap_redis_errors
from ledger.history import decode_entries, parse_message_id
from ledger.keys import Keyspace
from ledger.limits import CHATS_BATCH
from ledger.results import ChatState, StoredMessage

# Messages read with each chat of a batch; a chat with more continues in pages of its own.
EXPORT_FIRST_MESSAGES = 50
EXPORT_MESSAGES_MAX = 500

# The cursor's message part once a chat is exported whole.
DONE = "+"
# Score, chat id, then a message id (as history.py reads them) or DONE; one pattern for the API's schema too.
CURSOR_PATTERN = r"([0-9]{1,17})\.([0-9a-f-]{36})\.((?:[0-9]{1,16}-[0-9]{1,19}|\+)?)"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


class ExportCursor(msgspec.Struct, frozen=True):
    """A place in an export: the chat (its index score and id) and the last message of it exported ('':
    the chat's own record, no message yet; DONE: all of them). Written as `score.chat_id.message_id`."""

    score: int
    chat_id: str
    message_id: str = ""

    def __str__(self) -> str:
        return f"{self.score}.{self.chat_id}.{self.message_id}"

    @classmethod
    def parse(cls, text: str) -> ExportCursor | None:
        """The cursor `str()` wrote, or None for anything else (a client's typo is not a crash)."""
        match = _CURSOR_RE.fullmatch(text)
        if match is None or (match[3] not in ("", DONE) and parse_message_id(match[3]) is None):
            return None
        return cls(int(match[1]), match[2], match[3])


class ExportedChat(msgspec.Struct, frozen=True):
    chat: ChatState
    cursor: ExportCursor


class ExportedMessage(msgspec.Struct, frozen=True):
    chat_id: str
    message: StoredMessage
    cursor: ExportCursor


class ExportPage(msgspec.Struct, frozen=True):
    """Records in export order; `next` is where the next page starts, None when the export is done."""

    records: list[ExportedChat | ExportedMessage]
    next: ExportCursor | None


class Export:
    """Ledger's export method. Ledger.__init__ sets the attributes declared here."""

    redis: RedisClient
    keys: Keyspace

    @wrap_redis_errors
    async def export_page(
        self, config_id: str, cursor: ExportCursor | None = None, *, include_deleted: bool = False
    ) -> ExportPage:
        """The page after `cursor` (from the start when None). Deleted chats only with include_deleted."""
        if cursor is None:
            return await self._next_chats(config_id, None, include_deleted)
        records = await self._rest_of_chat(cursor)
        if len(records) == EXPORT_MESSAGES_MAX:
            return ExportPage(records=list(records), next=records[-1].cursor)
        page = await self._next_chats(config_id, cursor, include_deleted)
        return ExportPage(records=[*records, *page.records], next=page.next)

    async def _rest_of_chat(self, cursor: ExportCursor) -> list[ExportedMessage]:
        if cursor.message_id == DONE:
            return []
        after = parse_message_id(cursor.message_id) if cursor.message_id else None
        start = f"({after}" if after else "-"
        raw = await self.redis.xrange(
            self.keys.chat_messages(cursor.chat_id), min=start, max="+", count=EXPORT_MESSAGES_MAX
        )
        return _messages(cursor, raw)

    async def _next_chats(
        self, config_id: str, cursor: ExportCursor | None, include_deleted: bool
    ) -> ExportPage:
        """The chats after `cursor`, a batch, each with its first messages; a chat with more ends the
        page, its cursor inside it."""
        batch = await self._chats_after(config_id, cursor, include_deleted)
        if not batch:
            return ExportPage(records=[], next=None)
        async with self.redis.pipeline(transaction=False) as pipe:
            for chat_id, _score in batch:
                _ = pipe.hgetall(self.keys.chat_meta(chat_id))
                _ = pipe.xrange(self.keys.chat_messages(chat_id), count=EXPORT_FIRST_MESSAGES)
            replies = await pipe.execute()
        records: list[ExportedChat | ExportedMessage] = []
        last = ExportCursor(int(batch[-1][1]), batch[-1][0], DONE)
        for (chat_id, score), fields, raw in zip(batch, replies[::2], replies[1::2], strict=True):
            # Erased since the index was read, or a deleted chat left in the live index: not exported.
            if not fields or (fields["deleted"] == "1" and not include_deleted):
                continue
            at = ExportCursor(int(score), chat_id)
            records.append(ExportedChat(chat_from_hash(chat_id, fields), at))
            messages = _messages(at, raw)
            records += messages
            if len(messages) == EXPORT_FIRST_MESSAGES:
                return ExportPage(records=records, next=messages[-1].cursor)
        return ExportPage(records=records, next=last)

    async def _chats_after(
        self, config_id: str, cursor: ExportCursor | None, include_deleted: bool
    ) -> list[tuple[str, float]]:
        """The next CHATS_BATCH (chat id, score) of the index after `cursor`: chats of one score sort
        by id, so those of the cursor's score up to its id are the ones already passed."""
        keys = self.keys
        index = keys.config_chats(config_id) if include_deleted else keys.config_live_chats(config_id)
        low = cursor.score if cursor else 0
        skip = 0
        while True:
            raw = await self.redis.zrange(
                index, low, "+inf", byscore=True, offset=skip, num=CHATS_BATCH, withscores=True
            )
            found = cast(list[tuple[str, float]], raw)
            fresh = [
                (chat_id, score)
                for chat_id, score in found
                if cursor is None or int(score) > cursor.score or chat_id > cursor.chat_id
            ]
            if fresh or len(found) < CHATS_BATCH:
                return fresh
            skip += len(found)


def _messages(at: ExportCursor, raw: object) -> list[ExportedMessage]:
    """Stream entries as redis-py returns them ((id, {field: value})) into the records of one chat."""
    read = cast(list[tuple[str, dict[str, str]]], raw)
    entries = [[entry_id, [x for pair in fields.items() for x in pair]] for entry_id, fields in read]
    return [
        ExportedMessage(at.chat_id, message, ExportCursor(at.score, at.chat_id, message.message_id))
        for message in decode_entries(entries)
    ]
