"""What Redis itself sees: the commands and round trips of each message (MONITOR), memory (INFO), and the
raw size of what the history holds.

A round trip is one wait of the service for Redis. The service writes a transaction (MULTI ... EXEC) in
one go (ledger/multiplex.py), so MONITOR's view is folded: every command outside a transaction is a
round trip, and a whole transaction is one. Commands run by scripts show up as `[0 lua]` and are not
round trips.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec

import ledger

# `+1700000000.123456 [0 127.0.0.1:54321] "evalsha" "..."`, or `[0 lua]` for a script's own commands.
_MONITOR_LINE = re.compile(r'^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"')
_END_MARKER = "chatledger-bench-monitor-end"
MONITOR_TIMEOUT_S = 60.0


class RoundTrips(msgspec.Struct, frozen=True, kw_only=True):
    round_trips: int
    # Commands the clients sent, by name (script commands excluded), e.g. {"evalsha": 100, ...}.
    commands: dict[str, int]


def fold_monitor(lines: list[str]) -> RoundTrips:
    """Round trips and commands from MONITOR lines (see the module docstring)."""
    in_transaction: dict[str, bool] = collections.defaultdict(bool)
    commands: collections.Counter[str] = collections.Counter()
    round_trips = 0
    for line in lines:
        match = _MONITOR_LINE.match(line)
        if match is None or match[1] == "lua":
            continue
        client, name = match[1], match[2].lower()
        commands[name] += 1
        if name == "multi":
            in_transaction[client] = True
            round_trips += 1
        elif name in ("exec", "discard"):
            in_transaction[client] = False
        elif not in_transaction[client]:
            round_trips += 1
    return RoundTrips(round_trips=round_trips, commands=dict(commands))


async def monitor_round_trips(
    port: int, action: Callable[[], Awaitable[None]], *, ignore: Sequence[str] = ()
) -> RoundTrips:
    """The round trips Redis served from other clients while `action` ran; lines containing any of
    `ignore` are left out (a baseline server's straggler from the run before)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines: list[str] = []
    try:
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        if (await reader.readline()).strip() != b"+OK":
            raise RuntimeError("MONITOR was refused")
        await action()
        marker = ledger.connect(f"redis://127.0.0.1:{port}/0")
        try:
            await marker.echo(_END_MARKER)
        finally:
            await marker.aclose()
        marker_client = None
        deadline = time.monotonic() + MONITOR_TIMEOUT_S
        while marker_client is None and time.monotonic() < deadline:
            line = (await asyncio.wait_for(reader.readline(), MONITOR_TIMEOUT_S)).decode(errors="replace")
            match = _MONITOR_LINE.match(line)
            if _END_MARKER in line and match is not None:
                marker_client = match[1]
            else:
                lines.append(line)
    finally:
        writer.close()
        await writer.wait_closed()
    # The marker's connection may have said CLIENT SETINFO and the like before its ECHO: not the action's.
    kept = [ln for ln in lines if f" {marker_client}]" not in ln and not any(x in ln for x in ignore)]
    return fold_monitor(kept)


async def cpu_seconds(client: ledger.RedisClient) -> float:
    """Redis's CPU time so far, user and system: what a phase cost Redis, whatever else ran."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def used_memory(client: ledger.RedisClient) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def stored_memory(client: ledger.RedisClient) -> tuple[int, int]:
    """(used_memory without the clients' connection buffers, those buffers): what the data takes,
    apart from the connections that the load's servers open and keep during a measurement (the bare
    baselines' pools grow to one connection per load connection, tens of KB each)."""
    info = await client.info("memory")
    clients = int(info["mem_clients_normal"])
    return int(info["used_memory"]) - clients, clients


# Sums the bytes of the content field (`c`, the 4th value of the u,c,t,m,f layout) of every entry of a
# stream, a chunk per XRANGE so memory stays bounded; returns {entries, bytes}.
CONTENT_BYTES_SCRIPT = """
local start, entries, bytes = '-', 0, 0
while true do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1000)
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'c' then bytes = bytes + #fields[i + 1] end
    end
  end
  entries = entries + #batch
  start = '(' .. batch[#batch][1]
end
return {entries, bytes}
"""


async def content_bytes(client: ledger.RedisClient, stream_keys: list[str]) -> tuple[int, int]:
    """(messages, UTF-8 bytes of their contents) over the given history streams."""
    messages = size = 0
    for key in stream_keys:
        entries, nbytes = await client.eval(CONTENT_BYTES_SCRIPT, 1, key)
        messages += int(entries)
        size += int(nbytes)
    return messages, size
