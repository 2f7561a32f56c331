"""History pages of a huge chat against a small one, through the API.

The big chat's stream is filled directly in Redis by a Lua loop, with exactly the entry layout settle.lua
writes (fields u, c, t, m, f; a question and a reply in turn): a million messages through the API would
take most of the run. Each page is then timed through `GET /chats/{id}/messages/` one request at a
time: the default first page, a cursor page from the middle (`after=`), and an offset page in the middle,
which walks to its offset by design (docs/design.md section 11) and is reported as it is.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec

import ledger
from bench.ledger_bench import QUESTION, QUESTION_TOKENS, REPLY, REPLY_TOKENS
from bench.load import percentiles_ms

# Appends ARGV[1] entries (a question and a reply in turn) to the stream KEYS[1]; returns the first id.
FILL_SCRIPT = """
local first
for i = 1, tonumber(ARGV[1]) do
  local id
  if i % 2 == 1 then
    id = redis.call('XADD', KEYS[1], '*', 'u', '1', 'c', ARGV[2], 't', ARGV[4], 'm', '0', 'f', '')
  else
    id = redis.call('XADD', KEYS[1], '*', 'u', '0', 'c', ARGV[3], 't', ARGV[5], 'm', ARGV[6], 'f', '')
  end
  if i == 1 then first = id end
end
return first
"""
# Entries per script call: long enough to be fast, short enough not to hold Redis for long.
FILL_BATCH = 10_000


class PageTimes(msgspec.Struct, frozen=True, kw_only=True):
    p50_ms: float
    p99_ms: float
    samples: int


async def fill_history(client: ledger.RedisClient, stream_key: str, messages: int) -> str:
    """Append `messages` entries; returns the id of the entry in the middle, for cursor pages."""
    middle = ""
    added = 0
    charge = str((QUESTION_TOKENS + REPLY_TOKENS) * 1000)
    while added < messages:
        count = min(FILL_BATCH, messages - added)
        first: str = await client.eval(
            FILL_SCRIPT, 1, stream_key, count, QUESTION, REPLY, QUESTION_TOKENS, REPLY_TOKENS, charge
        )
        if added <= messages // 2 < added + count:
            # The batch holding the middle: its first entry is close enough to the middle.
            middle = str(first)
        added += count
    return middle


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
