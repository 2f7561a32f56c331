"""History pages of a huge chat against a small one, through the API, and the slowest Redis call of the
API's requests (SLOWLOG).

The big chat's stream is filled directly in Redis by a Lua loop, with exactly the entry layout settle.lua
writes (ids `<position>-<time ms>`; fields u, c, t, m, f; a question and a reply in turn): a million
messages through the API would take most of the run. Each page is then timed through
`GET /chats/{id}/messages/` one request at a time: the default first page, a cursor page from the middle
(`after=`), an offset page in the middle, and a page of 50 at the middle offset against the first page of
50 of the same chat; an offset is an id range now (design.md section 6), so no page walks.

SLOWLOG: while the API is under the bench's load, Redis logs every command slower than
SLOWLOG_THRESHOLD_US; the bench's own setup calls (its fills, its reads of memory and sizes) run between
the windows and are not counted.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec

import ledger
from bench.ledger_bench import QUESTION, QUESTION_TOKENS, REPLY, REPLY_TOKENS
from bench.load import percentiles_ms

# Appends ARGV[1] entries (a question and a reply in turn) to the stream KEYS[1], at positions from
# ARGV[7] on, with the time part ARGV[8], as settle.lua lays them out; returns the first id.
FILL_SCRIPT = """
local first
local start, time = tonumber(ARGV[7]), ARGV[8]
for i = 1, tonumber(ARGV[1]) do
  local id = string.format('%d', start + i - 1) .. '-' .. time
  if i % 2 == 1 then
    redis.call('XADD', KEYS[1], id, 'u', '1', 'c', ARGV[2], 't', ARGV[4], 'm', '0', 'f', '')
  else
    redis.call('XADD', KEYS[1], id, 'u', '0', 'c', ARGV[3], 't', ARGV[5], 'm', ARGV[6], 'f', '')
  end
  if i == 1 then first = id end
end
return first
"""
# Entries per script call: long enough to be fast, short enough not to hold Redis for long.
FILL_BATCH = 10_000
# SLOWLOG logs the commands slower than this while the API is measured (microseconds).
SLOWLOG_THRESHOLD_US = 250
SLOWLOG_MAX_LEN = 65_536


class PageTimes(msgspec.Struct, frozen=True, kw_only=True):
    p50_ms: float
    p99_ms: float
    samples: int


async def fill_history(client: ledger.RedisClient, stream_key: str, messages: int) -> str:
    """Append `messages` entries to an empty stream; returns the id of the entry in the middle, for
    cursor pages."""
    middle = ""
    added = 0
    charge = str((QUESTION_TOKENS + REPLY_TOKENS) * 1000)
    time_ms = time.time_ns() // 1_000_000
    while added < messages:
        count = min(FILL_BATCH, messages - added)
        first: str = await client.eval(
            FILL_SCRIPT,
            1,
            stream_key,
            count,
            QUESTION,
            REPLY,
            QUESTION_TOKENS,
            REPLY_TOKENS,
            charge,
            added,
            time_ms,
        )
        if added <= messages // 2 < added + count:
            # The batch holding the middle: its first entry is close enough to the middle.
            middle = str(first)
        added += count
    return middle


def filled_content_bytes(messages: int) -> int:
    """The UTF-8 bytes of the contents `fill_history` wrote: a question and a reply in turn. Known
    without reading a million entries back, which one script call would hold Redis for seconds."""
    question, reply = len(QUESTION.encode()), len(REPLY.encode())
    return (messages + 1) // 2 * question + messages // 2 * reply


async def time_page(session: aiohttp.ClientSession, url: str, samples: int) -> PageTimes:
    """One request at a time: `samples` timed after one untimed."""
    latencies: list[float] = []
    for n in range(samples + 1):
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url} answered {response.status}")
        if n:
            latencies.append(time.perf_counter() - started)
    p50, p99 = percentiles_ms(latencies)
    return PageTimes(p50_ms=p50, p99_ms=p99, samples=samples)


class SlowCall(msgspec.Struct, frozen=True, kw_only=True):
    duration_us: int
    # The command's name, or for EVALSHA the script's (a ledger script's file name, `trivial` for the
    # bare handlers' `return 1`, else the SHA).
    command: str


class SlowLog:
    """The Redis calls slower than SLOWLOG_THRESHOLD_US inside the windows `start` .. `take`."""

    def __init__(self, client: ledger.RedisClient, scripts: dict[str, str]) -> None:
        """`scripts`: SHA -> name of the scripts whose calls should be named."""
        self._client = client
        self._scripts = scripts
        self.calls: list[SlowCall] = []

    async def start(self) -> None:
        await self._client.config_set("slowlog-log-slower-than", SLOWLOG_THRESHOLD_US)
        await self._client.config_set("slowlog-max-len", SLOWLOG_MAX_LEN)
        await self._client.slowlog_reset()

    async def take(self) -> None:
        """Keep what was logged since `start`, and stop logging until the next window."""
        entries = await self._client.slowlog_get(SLOWLOG_MAX_LEN)
        await self._client.config_set("slowlog-log-slower-than", -1)
        for entry in entries:
            command = entry["command"]
            text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
            words = text.split(" ", 2)
            name = words[0].lower()
            if name == "evalsha" and len(words) > 1:
                name = self._scripts.get(words[1], words[1])
            self.calls.append(SlowCall(duration_us=int(entry["duration"]), command=name))

    def chosen(self, *, only: str | None = None, excluding: str = "") -> list[SlowCall]:
        """The calls of command `only` (any, when None), those of `excluding` left out."""
        return [c for c in self.calls if c.command != excluding and only in (None, c.command)]

    def slowest(self, *, only: str | None = None, excluding: str = "") -> SlowCall | None:
        return max(self.chosen(only=only, excluding=excluding), key=lambda c: c.duration_us, default=None)

    def over(self, limit_us: int, *, only: str | None = None, excluding: str = "") -> int:
        return sum(1 for c in self.chosen(only=only, excluding=excluding) if c.duration_us > limit_us)
