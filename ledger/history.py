"""History entries: stream entry <-> StoredMessage, message ids, and the page query.

A stream entry id is `<position>-<time ms>` (settle.lua): the message's place in the chat, counted from
0, then its time on the Redis clock, so an offset page is an id range. Chats written before positions
keep the ids Redis gave them, `<time ms>-<sequence>`; a first part of 10^12 or more is such a time (no
chat holds 10^12 messages, and no chatledger chat is older than 2001), which tells the two apart.
A message id is the entry id with the first part zero-padded to 16 digits and the second to at least 6
(`0000000000000042-1764770000000`), so a chat's ids sort as strings in the order of its messages;
cursors accept that form or the raw form.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from ledger.results import StoredMessage

# Used with fullmatch and ASCII digits only: `$` would accept a trailing newline and `\d` any Unicode digit.
# A second part of up to 19 digits holds a time in ms (a positional id's) and stays below 2^64, which
# Redis would refuse as an id.
_ID_RE = re.compile(r"([0-9]{1,16})-([0-9]{1,19})")

HistoryMode = Literal["offset", "after", "before"]

# An entry id's first part below this is a position (its second part the time); at or above, a time.
POSITION_ID_BELOW = 10**12

# The fields of a history entry, in the order settle.lua writes them.
_FIELD_ORDER = ["u", "c", "t", "m", "f"]


class HistoryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A page request: `offset` (the spec's pagination) or a cursor (`after`/`before`, Part C)."""

    limit: int
    offset: int = 0
    after: str | None = None
    before: str | None = None

    def script_args(self) -> tuple[HistoryMode, str]:
        if self.after is not None:
            return "after", self.after
        if self.before is not None:
            return "before", self.before
        return "offset", str(self.offset)


def format_message_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    # Padded as strings, cheaper than int() and back; leading zeros of an already padded id are
    # dropped first, so any spelling of an id formats the same.
    return f"{ms.lstrip('0').zfill(16)}-{seq.lstrip('0').zfill(6)}"


def parse_message_id(message_id: str) -> str | None:
    """The raw stream id for a message id (padded or not), or None when it is not one."""
    match = _ID_RE.fullmatch(message_id)
    if not match:
        return None
    return f"{int(match[1])}-{int(match[2])}"


def decode_entry(entry: list[object]) -> StoredMessage:
    """A StoredMessage from a stream entry as the scripts return it: `[id, [field, value, ...]]`.

    Hot (a reserve that reads its whole context decodes every entry of it), so the layout settle.lua
    writes (u, c, t, m, f in that order) is read by position; any other order goes through a dict."""
    entry_id = str(entry[0])
    raw = entry[1]
    assert isinstance(raw, list), "a stream entry's fields are a flat list"
    if len(raw) == 10 and raw[0::2] == _FIELD_ORDER:
        user, content, tokens, charged, flags = raw[1::2]
    else:
        fields = dict(zip(raw[::2], raw[1::2], strict=True))
        user, content, tokens, charged, flags = (fields[name] for name in _FIELD_ORDER)
    return make_message(
        entry_id,
        is_user=user == "1",
        content=content,
        tokens=int(tokens),
        charged_milli=int(charged),
        flags=flags,
    )


def make_message(
    entry_id: str, *, is_user: bool, content: str, tokens: int, charged_milli: int, flags: str
) -> StoredMessage:
    """A StoredMessage for a raw stream entry id, whose time part is the message's timestamp."""
    message_id = format_message_id(entry_id)
    first, _, second = entry_id.partition("-")
    position_or_time = int(first)
    return StoredMessage(
        message_id=message_id,
        is_user=is_user,
        content=content,
        tokens=tokens,
        charged_milli=charged_milli,
        flags=flags,
        timestamp_ms=int(second) if position_or_time < POSITION_ID_BELOW else position_or_time,
    )


def decode_entries(entries: object) -> list[StoredMessage]:
    assert isinstance(entries, list), "scripts return entries as a list"
    return [decode_entry(entry) for entry in entries]
