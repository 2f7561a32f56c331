"""Each worker's copy of its chats' newest messages, so a reserve reads only what is new (issue 6).

A chat's history is append-only: an entry never changes and is never removed. A worker that read a
chat's newest messages once therefore needs only the ones added since: the reserve's transaction reads
`XREVRANGE msgs + (<newest cached id> COUNT n` instead of the whole context (20 messages by default), and
the cached messages fill the rest. On a busy chat that is a message pair or two instead of twenty, for
Redis to send and for the worker to parse and decode.

The reserve script returns the stream's length and newest id, which check every merge: the new entries
must be exactly what the stream grew by, and end at its newest entry. A cache that fails the check (a
stream recreated after a data loss, say) is dropped and the context read again, anchored at that newest
id, so the result is always what a whole read in the transaction would have given. A worker's cache
holds no state that matters: losing it costs one whole read.

A worker's own settle adds its pair to the cache (settle.lua says where it appended), so the worker's
next reserve of that chat finds the cache current and sends its own pricing of the context with the
newest id it holds: reserve.lua uses that pricing only when the id is still the chat's newest and
otherwise prices the chat itself, which costs Redis far more (a Lua loop over the token counts).

A chat that only this worker has written since it cached it is reserved with the script alone, no
transaction: its read would find nothing new, and MULTI, the read and EXEC cost the worker about an
eighth of a message's ledger Python and Redis about 4% of a pair. Should another worker have written
meanwhile, the reply's stream length and newest id say so, and the worker reads the entries it lacks
right after (anchored at that newest id, so it gets exactly what the transaction would have; one round
trip more). The chat is then taken to be shared between workers, and its next SHARED_RESERVES
reserves that find nothing new again still use the transaction. Reading the new entries inside the
script instead was measured and is much dearer: Redis turns a stream reply into nested Lua tables one
`lua_settable` at a time, about 60k instructions more for one pair of entries than the native read's
20k (issue 6).

Bounded in chats and in characters of content; the least recently used chats go first.
"""

from __future__ import annotations

import collections

from ledger.history import decode_entry
from ledger.limits import CONTEXT_CACHE_CHARS_MAX, CONTEXT_CACHE_CHATS_MAX
from ledger.multiplex import Command
from ledger.results import StoredMessage

# The id below every stream id: `(0-0` reads a whole stream.
_BEFORE_ALL = "0-0"

# After another worker wrote to a chat, this many of its reserves that find nothing new keep using the
# transaction before the chat is taken to be this worker's alone again. Two workers taking turns at
# random on a chat find it written by the other every other reserve, so the count rarely runs out.
SHARED_RESERVES = 8


class _Cached:
    """A chat's newest messages as of a stream length, newest first: at most `window` of them (the
    count of the read that filled the cache), or the whole chat while it is shorter than that."""

    __slots__ = ("chars", "length", "messages", "newest_id", "shared", "window")

    def __init__(
        self,
        newest_id: str,
        length: int,
        messages: list[StoredMessage],
        chars: int,
        window: int,
        shared: int = 0,
    ) -> None:
        self.newest_id = newest_id
        self.length = length
        self.messages = messages
        self.chars = chars
        self.window = window
        # How many more reserves use the transaction because another worker wrote to the chat.
        self.shared = shared

    def covers(self, count: int) -> bool:
        """Whether these messages and the ones added since make the newest `count`."""
        return len(self.messages) >= count or len(self.messages) == self.length

    def price(self, count_max: int, tokens_max: int) -> tuple[int, int]:
        """The context reserve.lua would choose from these messages: (its tokens, its message count),
        the newest messages that fit both bounds, stopping at the first that does not."""
        tokens = count = 0
        for message in self.messages[:count_max]:
            if tokens + message.tokens > tokens_max:
                break
            tokens += message.tokens
            count += 1
        return tokens, count


class ContextPlan:
    """The newest `count` messages a reserve wants from the stream `messages_key`, and the cached
    messages it extends (if any). `alone`: the chat is taken to be this worker's alone, so the reserve
    sends the script without the transaction and reads what is new only if the reply shows the chat
    moved (`catch_up`); otherwise the transaction reads `command`."""

    __slots__ = ("alone", "base", "count", "messages_key")

    def __init__(self, messages_key: str, count: int, base: _Cached | None) -> None:
        self.messages_key = messages_key
        self.count = count
        self.base = base
        self.alone = base is not None and base.shared == 0

    @property
    def command(self) -> Command:
        """The transaction's read: only what is newer than the cached messages, or the whole context.
        Built when sent, so a reserve sent alone builds none."""
        after = f"({self.base.newest_id}" if self.base is not None else "-"
        return ("XREVRANGE", self.messages_key, "+", after, "COUNT", self.count)

    def catch_up(self, length: int, newest_id: str) -> Command | None:
        """The read of the entries an `alone` reserve lacks, given the stream's length and newest id
        the script saw; None when the cached messages are still the newest. Anchored at `newest_id`:
        the history is append-only, so this reads what the transaction would have read."""
        base = self.base
        assert base is not None, "only a plan with cached messages catches up"
        if length == base.length and (newest_id or _BEFORE_ALL) == base.newest_id:
            return None
        return ("XREVRANGE", self.messages_key, newest_id or "+", f"({base.newest_id}", "COUNT", self.count)


class ContextCache:
    def __init__(self, chats_max: int = CONTEXT_CACHE_CHATS_MAX, chars_max: int = CONTEXT_CACHE_CHARS_MAX):
        self._chats: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._chats_max = chats_max
        self._chars_max = chars_max
        self._chars = 0

    def plan(self, chat_id: str, messages_key: str, count: int) -> ContextPlan:
        """The read for the newest `count` messages: only the new ones when the cache has the rest."""
        base = self._chats.get(chat_id)
        return ContextPlan(messages_key, count, base if base is not None and base.covers(count) else None)

    def merge(
        self, chat_id: str, plan: ContextPlan, entries: list[list[object]], *, length: int, newest_id: str,
        count: int,
    ) -> list[StoredMessage] | None:  # fmt: skip
        """The newest `count` messages, newest first, from the plan's read (`entries`) and the stream's
        length and newest id at that moment; None when they do not agree (read again, anchored)."""
        base = plan.base
        head = str(entries[0][0]) if entries else (base.newest_id if base else _BEFORE_ALL)
        if (length and head != newest_id) or (not length and entries):
            self.forget(chat_id)
            return None
        if base is not None and not entries and length == base.length:
            # Nothing new (the worker's own settle was the last): the cached messages as they are,
            # kept as the chat's entry unless something newer replaced it meanwhile.
            current = self._chats.get(chat_id)
            if current is base:
                self._chats.move_to_end(chat_id)
            elif current is None:
                self.store(chat_id, base)
            if base.shared:
                base.shared -= 1
            return base.messages[:count]
        fresh = [decode_entry(entry) for entry in entries]
        if base is None:
            messages = fresh[:count]
            chars = _chars(messages)
        else:
            grown = length - base.length
            if not (grown == len(fresh) or (len(fresh) == count and grown >= count)):
                self.forget(chat_id)
                return None
            messages = (fresh + base.messages)[:count]
            # Counted from the few new and dropped messages, not the whole context again.
            dropped = base.messages[max(count - len(fresh), 0) :]
            chars = base.chars + _chars(fresh[:count]) - _chars(dropped)
        # Entries this worker did not write: another worker shares the chat (see SHARED_RESERVES).
        shared = SHARED_RESERVES if base is not None and fresh else 0
        self.store(chat_id, _Cached(head, length, messages, chars, count, shared))
        return messages

    def store(self, chat_id: str, cached: _Cached) -> None:
        old = self._chats.pop(chat_id, None)
        if old is not None:
            self._chars -= old.chars
        self._chats[chat_id] = cached
        self._chars += cached.chars
        while self._chats and (len(self._chats) > self._chats_max or self._chars > self._chars_max):
            _chat_id, evicted = self._chats.popitem(last=False)
            self._chars -= evicted.chars

    def remember(
        self, chat_id: str, entries: list[list[object]], *, length: int, count: int
    ) -> list[StoredMessage]:
        """A whole read's newest `count` messages (newest first), cached."""
        messages = [decode_entry(entry) for entry in entries][:count]
        newest_id = str(entries[0][0]) if entries else _BEFORE_ALL
        self.store(chat_id, _Cached(newest_id, length, messages, _chars(messages), count))
        return messages

    def extend(
        self, chat_id: str, pair: list[StoredMessage], *, previous_id: str, newest_id: str, length: int
    ) -> None:
        """Add a settled pair (newest first, the newest's stream id `newest_id`) when the cache ended
        exactly where it was appended (`previous_id`, '' for an empty chat, and the stream `length`
        after it, from settle.lua), so the worker's next reserve of the chat finds its cache current.
        Anything else leaves the cache as it is: the next reserve reads what is new."""
        cached = self._chats.get(chat_id)
        if cached is None or cached.length + len(pair) != length:
            return
        if cached.newest_id != (previous_id or _BEFORE_ALL):
            return
        combined = pair + cached.messages
        # Never more than the window: a whole short chat grows into one and then keeps its size.
        # (Keeping a whole chat whole made every settle copy its entire history, issue 6.)
        kept = min(len(combined), cached.window)
        messages = combined[:kept]
        chars = cached.chars + _chars(pair) - _chars(combined[kept:])
        self.store(chat_id, _Cached(newest_id, length, messages, chars, cached.window, cached.shared))

    def forget(self, chat_id: str) -> None:
        old = self._chats.pop(chat_id, None)
        if old is not None:
            self._chars -= old.chars


def _chars(messages: list[StoredMessage]) -> int:
    return sum(len(message.content) for message in messages)
