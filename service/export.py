"""A config's export as NDJSON, one record per line, for `GET /admin/configs/{id}/export` and
`chatledger export` (design.md section 12, docs/operations.md).

Lines, in order: a `chat` line (the admin's chat object), then a `message` line per message of that
chat (the API's message object), then the next chat; the last line is `end` with the counts of this
run, or `error` when the store failed midway. Every line but `end` carries the `cursor` to resume
after it. The ledger hands over a bounded page at a time and each page is encoded and written before
the next is read, so the memory held is one page's, whatever the config's size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import msgspec

import ledger
from service.admin_schemas import AdminChat, admin_chat
from service.schemas import MessageOut, message_out


class ChatLine(msgspec.Struct, tag_field="type", tag="chat"):
    cursor: str
    chat: AdminChat


class MessageLine(msgspec.Struct, tag_field="type", tag="message"):
    cursor: str
    message: MessageOut


class EndLine(msgspec.Struct, tag_field="type", tag="end"):
    """The export is complete: nothing follows this line. Counts are of this run (a resumed export
    counts only what it sent)."""

    chats: int
    messages: int


class ErrorLine(msgspec.Struct, tag_field="type", tag="error"):
    """The store failed midway: resume from `cursor` (the last line's; '' for the start)."""

    code: Literal["store_unavailable"]
    detail: str
    cursor: str


_ENCODER = msgspec.json.Encoder()


async def ndjson_pages(
    book: ledger.Ledger, config_id: str, cursor: ledger.ExportCursor | None, *, include_deleted: bool
) -> AsyncIterator[bytes]:
    """The export's lines, a page of them per chunk, ending with an `end` or `error` line."""
    chats = messages = 0
    last = str(cursor) if cursor else ""
    while True:
        try:
            page = await book.export_page(config_id, cursor, include_deleted=include_deleted)
        except ledger.LedgerUnavailable as exc:
            yield _ENCODER.encode(ErrorLine(code="store_unavailable", detail=str(exc), cursor=last)) + b"\n"
            return
        chunk = bytearray()
        for record in page.records:
            last = str(record.cursor)
            if isinstance(record, ledger.ExportedChat):
                chats += 1
                line: ChatLine | MessageLine = ChatLine(cursor=last, chat=admin_chat(record.chat))
            else:
                messages += 1
                line = MessageLine(cursor=last, message=message_out(record.chat_id, record.message))
            _ENCODER.encode_into(line, chunk, -1)
            chunk += b"\n"
        if page.next is None:
            yield bytes(chunk) + _ENCODER.encode(EndLine(chats=chats, messages=messages)) + b"\n"
            return
        # A page of only skipped chats still moves the cursor on.
        last, cursor = str(page.next), page.next
        if chunk:
            yield bytes(chunk)
