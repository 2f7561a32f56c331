"""How a reserve gets its chat's context: one seam, ContextSource, and its two implementations.

ContextInReply: the reserve script prices the context and returns its entries. For clients without
the multiplexer (a Redis Cluster, the embedded fakeredis), where reading them apart would cost a round
trip of its own.

CachedContext: each worker keeps its chats' newest messages (ContextCache) and reads only the new ones,
natively, in the script's transaction on the multiplexer (ledger/multiplex.py): one round trip still,
and a stream reply costs Redis far less as a plain read than turned into Lua tables by a script. The
history is append-only, so a worker that read a chat's newest messages once needs only the ones added
since. The script returns the stream's length and newest id, which check every merge: the new entries
must be exactly what the stream grew by and end at its newest entry. A cache that fails the check (a
stream recreated after a data loss, say) is dropped and the context read again, anchored at that
newest id, so the result is always what a whole read in the transaction would have given. A history
written again as long as the one cached differs in its newest id's time part alone (ids are
`<position>-<time ms>`): the entries at the reused positions are written after the loss (a failover or a
restart, far longer than a millisecond) on the store's clock then; only a clock behind by that long (set
back, or a promoted replica's running behind the lost primary's) could repeat an id, to the millisecond.
The cache holds nothing that matters: losing it costs one whole read.

A worker's own settle adds its pair to the cache (settle.lua says where it appended), so its next
reserve of the chat finds the cache current and sends its own pricing of the context with the newest
id it holds (ContextMode.PRICED_BY_CALLER); reserve.lua uses that pricing only when the id is still the
chat's newest, and otherwise prices the chat itself. A chat that only this worker has written since it
cached it is reserved with the script alone, no transaction, since its read would find nothing new.
Should another worker have written meanwhile, the reply's length and newest id say so, and the worker
reads what it lacks right after, anchored at that newest id (one round trip more); the chat is then
taken to be shared, and its next SHARED_RESERVES reserves that find nothing new still use the
transaction.

The cache is bounded in chats and in characters of content; the least recently used chats go first.
"""

from __future__ import annotations

import collections
from typing import Protocol

import msgspec

from ledger.history import decode_entries, decode_entry
from ledger.limits import CONTEXT_CACHE_CHARS_MAX, CONTEXT_CACHE_CHATS_MAX
from ledger.multiplex import Command, Multiplexer
from ledger.packing import pack_numbers
from ledger.replies import Granted, Settled, decode_reserve
from ledger.results import StoredMessage
from ledger.scripts import ContextMode, Scripts

# The id below every stream id: `(0-0` reads a whole stream.
_BEFORE_ALL = "0-0"

# After another worker wrote to a chat, this many of its reserves that find nothing new keep using the
# transaction before the chat is taken to be this worker's alone again. Two workers taking turns at
# random on a chat find it written by the other every other reserve, so the count rarely runs out.
SHARED_RESERVES = 8


class ReserveCall(msgspec.Struct, frozen=True, kw_only=True):
    """One reserve's script call, all but how it gets the context, which its ContextSource adds."""

    chat_id: str
    # reserve.lua's KEYS; keys[1] is the chat's messages stream.
    keys: list[str]
    config_id: str
    reservation_id: str
    # ARGV[3]'s numbers up to hold_shares; the source adds its pricing (known_tokens, known_count).
    numbers: tuple[int, ...]
    # The request's fingerprint, with an Idempotency-Key only.
    fingerprint: tuple[str, ...] = ()
    count_max: int
    tokens_max: int

    def args(
        self, mode: ContextMode, known_id: str = "", known_tokens: int = 0, known_count: int = 0
    ) -> list[str | bytes]:
        numbers = pack_numbers(*self.numbers, known_tokens, known_count)
        return [self.config_id, self.reservation_id, numbers, mode, known_id, *self.fingerprint]


class ContextSource(Protocol):
    """How a reserve gets its context, and what a settle tells it."""

    async def reserve(self, call: ReserveCall) -> tuple[Granted, list[StoredMessage]]:
        """Send the reserve; its grant, and the context: the newest messages that fit the budget,
        newest first. A refusal raises its LedgerError (ledger/replies.py)."""
        ...

    def settled(self, chat_id: str, pair: list[StoredMessage], settled: Settled) -> None:
        """This worker settled `pair` (the reply, then the user message) on the chat."""
        ...


def context_source(scripts: Scripts) -> ContextSource:
    """The per-worker cache where the client has a multiplexer, whose transaction reads the new entries
    in the reserve's own round trip; the script's reply otherwise."""
    if scripts.multiplexer is not None:
        return CachedContext(scripts, scripts.multiplexer)
    return ContextInReply(scripts)


class ContextInReply:
    """The script prices the context and returns its entries (ContextMode.IN_REPLY)."""

    def __init__(self, scripts: Scripts) -> None:
        self._scripts = scripts

    async def reserve(self, call: ReserveCall) -> tuple[Granted, list[StoredMessage]]:
        reply = await self._scripts.call("reserve", keys=call.keys, args=call.args(ContextMode.IN_REPLY))
        granted = decode_reserve(reply)
        return granted, decode_entries(granted.entries)

    def settled(self, chat_id: str, pair: list[StoredMessage], settled: Settled) -> None:
        """Nothing is kept: every reserve gets its context from the script."""


class CachedContext:
    """The chats' newest messages kept by this worker; only the new ones are read, by the worker."""

    def __init__(self, scripts: Scripts, multiplexer: Multiplexer, cache: ContextCache | None = None) -> None:
        self._scripts = scripts
        self._multiplexer = multiplexer
        self.cache = cache or ContextCache()

    async def reserve(self, call: ReserveCall) -> tuple[Granted, list[StoredMessage]]:
        if call.count_max == 0:
            args = call.args(ContextMode.READ_BY_CALLER)
            return decode_reserve(await self._scripts.call("reserve", keys=call.keys, args=args)), []
        plan = self.cache.plan(call.chat_id, call.keys[1], call.count_max)
        args = _priced_args(call, plan)
        recent: list[list[object]] = []
        if plan.alone:
            # Only this worker wrote the chat since it cached it, so a read in the transaction would
            # find nothing new: the script alone, and a read after it only if the reply shows a write.
            granted = decode_reserve(await self._scripts.call("reserve", keys=call.keys, args=args))
            catch_up = plan.catch_up(granted.length, granted.newest_id)
            if catch_up is not None:
                recent = await self._read(catch_up)
        else:
            reply, recent = await self._scripts.call_then_read(
                "reserve", keys=call.keys, args=args, read=plan.command
            )
            granted = decode_reserve(reply)
        length, newest_id = granted.length, granted.newest_id
        newest = self.cache.merge(
            call.chat_id, plan, recent, length=length, newest_id=newest_id, count=call.count_max
        )
        if newest is None:
            newest = await self._read_again(call, granted)
        return granted, newest[: granted.context_count]

    def settled(self, chat_id: str, pair: list[StoredMessage], settled: Settled) -> None:
        """The pair goes into the cache, so this worker's next reserve of the chat finds it current."""
        self.cache.extend(
            chat_id, pair, previous_id=settled.previous_id, newest_id=settled.reply_id, length=settled.length
        )

    async def _read_again(self, call: ReserveCall, granted: Granted) -> list[StoredMessage]:
        """The newest messages when the cache and the read did not add up (a history recreated after a
        data loss): read again, anchored at the newest id the reserve saw. The history is append-only,
        so the result is the same as a whole read inside the transaction."""
        again: list[list[object]] = []
        if granted.length:
            again = await self._read(
                ("XREVRANGE", call.keys[1], granted.newest_id, "-", "COUNT", call.count_max)
            )
        return self.cache.remember(call.chat_id, again, length=granted.length, count=call.count_max)

    async def _read(self, command: Command) -> list[list[object]]:
        # Should this read fail, the hold just made stays until its deadline: no caller got it to void.
        entries: list[list[object]] = await self._multiplexer.execute(*command)
        return entries


def _priced_args(call: ReserveCall, plan: ContextPlan) -> list[str | bytes]:
    """The reserve's arguments: with the cached messages' own pricing when the cache has the chat."""
    base = plan.base
    if base is None:
        return call.args(ContextMode.READ_BY_CALLER)
    tokens, count = base.price(call.count_max, call.tokens_max)
    return call.args(ContextMode.PRICED_BY_CALLER, base.newest_id, tokens, count)


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
    """Chat id -> its newest messages, least recently used first out."""

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
        # Never more than the window: a whole short chat grows into one and then keeps its size, so a
        # settle never copies a chat's whole history.
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
