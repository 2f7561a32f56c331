"""Load generators for POST /chats/messages/: wrk (Debian's `wrk`) when installed, else an aiohttp client.

Both send the same requests: one message per request to a rotating set of chats, with the API key, on a
fixed number of keep-alive connections, for a fixed time. wrk is the one to trust for throughput: it
is written in C and needs a fraction of a core, where a Python client would take a core of the two the
machine has from the servers it measures. The aiohttp client keeps the smoke run working where wrk is
missing; it is also bounded in count.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec

MESSAGE_PATH = "/chats/messages/"
# What each message says: a short question, as a chat user would type it.
CONTENT = "How does the token budget of this chat work, and what does a message cost?"


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    # Socket errors and answers other than 2xx: a run with any is reported as such.
    errors: int
    generator: str
    # Redis's CPU time (user + system) during the run, filled in by the runner.
    redis_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def body(chat_id: str, *, stream: bool = False) -> bytes:
    fields: dict[str, object] = {"chat_id": chat_id, "content": CONTENT}
    if stream:
        fields["stream"] = True
    return json.dumps(fields).encode()


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


_WRK_SCRIPT = """
local chats = {%(chats)s}
local n = 0
wrk.method = "POST"
wrk.headers["X-API-Key"] = "%(key)s"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local chat = chats[(n %% #chats) + 1]
  return wrk.format(nil, "%(path)s", nil, '{"chat_id": "' .. chat .. '", "content": "%(content)s"%(extra)s}')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH {\\"requests\\": %%d, \\"us\\": %%d, \\"p50_us\\": %%d, " ..
    "\\"p99_us\\": %%d, \\"errors\\": %%d}\\n", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def run_wrk(
    url: str,
    api_key: str,
    chat_ids: Sequence[str],
    *,
    seconds: float,
    connections: int,
    workdir: Path,
    stream: bool = False,
) -> LoadResult:
    """One wrk run (one thread: the machine's cores are for the servers), bounded in time; `stream`
    asks for Server-Sent Events (`"stream": true` in the body)."""
    script = workdir / "messages.lua"
    script.write_text(
        _WRK_SCRIPT
        % {
            "chats": ", ".join(f'"{chat_id}"' for chat_id in chat_ids),
            "key": api_key,
            "path": MESSAGE_PATH,
            "content": CONTENT,
            "extra": ', "stream": true' if stream else "",
        }
    )
    duration = f"{max(1, round(seconds))}s"
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {done.stdout}{done.stderr}")
    figures = json.loads(line.removeprefix("BENCH "))
    return LoadResult(
        requests=figures["requests"],
        seconds=figures["us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        errors=figures["errors"],
        generator="wrk",
    )


async def run_aiohttp(
    url: str,
    api_key: str,
    chat_ids: Sequence[str],
    *,
    seconds: float,
    connections: int,
    max_requests: int,
    stream: bool = False,
) -> LoadResult:
    """The same load from Python: `connections` tasks on as many connections, until the time or the
    count runs out."""
    latencies: list[float] = []
    errors = 0
    bodies = [body(chat_id, stream=stream) for chat_id in chat_ids]
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    started = time.perf_counter()
    deadline = started + seconds

    async def client(session: aiohttp.ClientSession, first: int) -> None:
        nonlocal errors
        n = first
        while time.perf_counter() < deadline and len(latencies) + errors < max_requests:
            sent = time.perf_counter()
            try:
                async with session.post(url + MESSAGE_PATH, data=bodies[n % len(bodies)]) as response:
                    await response.read()
                    ok = response.status < 300
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1
            n += connections

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        await asyncio.gather(*(client(session, i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    p50, p99 = percentiles_ms(latencies)
    return LoadResult(
        requests=len(latencies) + errors,
        seconds=elapsed,
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        generator="aiohttp",
    )


def percentiles_ms(latencies_s: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds (0 for no samples)."""
    if len(latencies_s) < 2:
        return (latencies_s[0] * 1000,) * 2 if latencies_s else (0.0, 0.0)
    cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000
