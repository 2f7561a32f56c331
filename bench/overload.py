"""The overload rows: one worker offered twice what it can do, against the same worker at half load.

On one `chatledger serve` worker with a cap sized for the offline model's CPU-bound messages
(SIZED_CAP), then with the default cap, in turn, each for the run's measured seconds (bench/openloop.py
makes the load):

1. capacity: a closed loop on as many connections as the cap, so nothing is refused: the messages per
   second the worker serves;
2. half load: an open loop at half that rate; the p99 of its answers is the baseline;
3. overload: an open loop at twice that rate. The admitted messages' p99 against the baseline (target:
   within 5 times), and the refused ones' (503 `overloaded`) against 10 ms. Redis's EVALSHA count over
   the run shows the refusals cost Redis nothing: 2 per admitted message, a reserve and a settle.

`python -m bench` runs it after its other HTTP rows; `python -m bench.overload` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import msgspec

import ledger
from bench import load, openloop
from bench.load import percentiles_ms
from bench.processes import Child, Children, service_env, wait_ready
from bench.table import Row, render
from bench.tenant import bench_tenant
from tests.redis_servers import RedisServer, free_ports

HOST = "127.0.0.1"
# Open-loop connections per slot of the cap: a request that comes due finds a free connection even
# while a cap's worth of requests are being served and as many again are being refused.
CONNECTIONS_PER_SLOT = 4
# The targets: the admitted p99 within 5 times its half-load value; refusals within 10 ms.
ADMITTED_P99_RATIO_MAX = 5
REFUSED_MS_MAX = 10.0
# Chats the messages rotate over when the rows run alone, as many as `python -m bench` makes.
CHATS = 64
# The cap of the rows with targets. The offline model's messages are CPU-bound: each waits for the CPU
# behind every other one in flight, about in_flight / (messages per second) in all, so their cap is a
# latency budget (docs/operations.md), a few milliseconds' worth of messages here. The default cap is
# sized for replies that wait on a model, and is measured too, for comparison.
SIZED_CAP = 32


class Round(msgspec.Struct, frozen=True, kw_only=True):
    """One measurement: the capacity found, then half load and twice it, and Redis's EVALSHAs then."""

    cap: int
    rate: float
    half: openloop.Answers
    double: openloop.Answers
    evalsha: int

    @property
    def ratio(self) -> float:
        """The admitted p99 at twice the capacity over the p99 at half load."""
        p99_half = percentiles_ms(self.half.of(200))[1]
        return percentiles_ms(self.double.of(200))[1] / p99_half if p99_half else 0.0


async def rows(
    children: Children,
    client: ledger.RedisClient,
    redis_url: str,
    api_key: str,
    chat_ids: Sequence[str],
    *,
    seconds: float,
    warmup_seconds: float,
    rounds: int = 1,
) -> list[Row]:
    """The worker at the cap sized for its CPU-bound messages (the two rows with targets), then at the
    default cap (a row for comparison)."""
    measured = [
        await measure(children, client, redis_url, api_key, chat_ids, cap, seconds, warmup_seconds, rounds)
        for cap in (SIZED_CAP, None)
    ]
    return [_admitted_row(measured[0]), _refused_row(measured[0]), _default_row(measured[1])]


async def measure(
    children: Children,
    client: ledger.RedisClient,
    redis_url: str,
    api_key: str,
    chat_ids: Sequence[str],
    cap: int | None,
    seconds: float,
    warmup_seconds: float,
    rounds: int,
) -> Round:
    """Start a worker with `cap` (None: the default), measure it `rounds` times (capacity, half load,
    twice the capacity), stop it; the round with the median ratio (this machine's speed drifts)."""
    (port,) = free_ports(1)
    worker = start_worker(children, redis_url, port, cap)
    try:
        cap = _cap(port)
        requests = [openloop.message_request(HOST, port, api_key, c, load.CONTENT) for c in chat_ids]
        if warmup_seconds > 0:
            await openloop.run(HOST, port, requests, connections=cap, seconds=warmup_seconds)
        measured = [await _round(client, port, requests, cap, seconds) for _ in range(rounds)]
    finally:
        children.stop([worker])
    return sorted(measured, key=lambda r: r.ratio)[len(measured) // 2]


async def _round(
    client: ledger.RedisClient, port: int, requests: Sequence[bytes], cap: int, seconds: float
) -> Round:
    capacity = await openloop.run(HOST, port, requests, connections=cap, seconds=seconds)
    rate = capacity.count(200) / capacity.seconds
    connections = CONNECTIONS_PER_SLOT * cap
    half = await openloop.run(HOST, port, requests, connections=connections, seconds=seconds, rate=rate / 2)
    calls_before = await evalsha_calls(client)
    double = await openloop.run(HOST, port, requests, connections=connections, seconds=seconds, rate=rate * 2)
    evalsha = await evalsha_calls(client) - calls_before
    return Round(cap=cap, rate=rate, half=half, double=double, evalsha=evalsha)


def start_worker(children: Children, redis_url: str, port: int, cap: int | None) -> Child:
    """`chatledger serve`, one worker, with `cap` (else the default), ready when /readyz answers."""
    command = [sys.executable, "-m", "service", "serve", "--host", HOST, "--port", str(port)]
    settings = {} if cap is None else {"CHATLEDGER_MAX_IN_FLIGHT": str(cap)}
    child = children.start("chatledger-overload", command, service_env(redis_url, **settings))
    wait_ready(f"http://{HOST}:{port}/readyz", [child])
    return child


def _cap(port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=10) as response:
        cap: int = json.load(response)["max_in_flight"]
    return cap


async def evalsha_calls(client: ledger.RedisClient) -> int:
    """EVALSHA calls Redis has served since it started (INFO commandstats)."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "evalsha_ro"))


def _figure(latencies_s: Sequence[float]) -> str:
    p50, p99 = percentiles_ms(latencies_s)
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def _others(answers: openloop.Answers) -> str:
    """Answers other than 200 and 503, sockets that failed, requests sent late: none, in a sound run."""
    odd = sorted({s for s in answers.statuses if s not in (200, 503)})
    parts = [f"{answers.count(s)} × {s}" for s in odd]
    if answers.errors:
        parts.append(f"{answers.errors} socket errors")
    if answers.late:
        parts.append(f"{answers.late} sent late (no free connection)")
    return f" ({', '.join(parts)})" if parts else ""


def _refused(answers: openloop.Answers) -> str:
    """Refusals where none should be (half load): the worker stalled, or the machine was busy."""
    return f", {answers.count(503):,} refused" if answers.count(503) else ""


def _admitted_row(measured: Round) -> Row:
    return Row(
        order=50,
        figure="Overload, 1 worker at twice its capacity: p99 of the messages it admits, against half load",
        ours=_overloaded(measured),
        baseline=_half(measured),
        ratio=measured.ratio,
        target=f"≤ {ADMITTED_P99_RATIO_MAX}",
    )


def _refused_row(measured: Round) -> Row:
    double, evalsha = measured.double, measured.evalsha
    refused = double.of(503)
    admitted = double.count(200)
    worst = f", max {1000 * max(refused):.1f} ms" if refused else ""
    per_admitted = f"{evalsha / admitted:.2f}" if admitted else "-"
    return Row(
        order=51,
        figure="Overload: time to refuse a message past the cap (503 `overloaded`, `Retry-After`)",
        ours=f"{_figure(refused)}{worst} over {len(refused):,} refusals; Redis EVALSHA {evalsha:,} "
        f"in the run, {per_admitted} per admitted message (reserve + settle): none for a refusal",
        baseline=f"the target, {REFUSED_MS_MAX:g} ms",
        ratio=percentiles_ms(refused)[1] / REFUSED_MS_MAX,
        target="≤ 1",
    )


def _default_row(measured: Round) -> Row:
    """The same at the default cap, sized for replies that wait on a model rather than the CPU."""
    refused = _figure(measured.double.of(503))
    return Row(
        order=52,
        figure="Overload at the default cap (sized for a real model's waits, not the CPU): admitted p99 "
        "against half load",
        ours=f"{_overloaded(measured)}; refusals {refused}",
        baseline=_half(measured),
        ratio=measured.ratio,
        target="none: the cap to size is docs/operations.md's",
    )


def _overloaded(measured: Round) -> str:
    double, admitted = measured.double, measured.double.of(200)
    return (
        f"{2 * measured.rate:,.0f} req/s offered for {double.seconds:.0f} s: {len(admitted):,} admitted, "
        f"{_figure(admitted)}; {double.count(503):,} refused{_others(double)}"
    )


def _half(measured: Round) -> str:
    half = measured.half
    return (
        f"half load, {measured.rate / 2:,.0f} req/s offered: {_figure(half.of(200))}{_refused(half)}"
        f"{_others(half)}; "
        f"capacity {measured.rate:,.0f} req/s (closed loop, {measured.cap} connections), "
        f"`CHATLEDGER_MAX_IN_FLIGHT={measured.cap}`"
    )


# --- `python -m bench.overload`: these rows alone ----------------------------------------------------------
async def _alone(seconds: float, warmup_seconds: float, rounds: int, workdir: Path) -> list[Row]:
    keys = ledger.Keyspace("cl")
    with RedisServer() as server, Children(workdir) as children:
        client = ledger.connect(server.url)
        try:
            api_key, chat_ids = await bench_tenant(client, keys, CHATS)
            return await rows(
                children, client, server.url, api_key, chat_ids,
                seconds=seconds, warmup_seconds=warmup_seconds, rounds=rounds,
            )  # fmt: skip
        finally:
            await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    from service.workers import loop_factory

    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the median one is shown (default 1)")
    parser.add_argument("--smoke", action="store_true", help="1 s phases: checks it runs, not speed")
    args = parser.parse_args(argv)
    seconds, warmup = (1.0, 0.0) if args.smoke else (args.seconds, args.warmup)
    with (
        tempfile.TemporaryDirectory(prefix="chatledger-bench-") as workdir,
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        found = runner.run(_alone(seconds, warmup, args.rounds, Path(workdir)))
    command = "python -m bench.overload " + " ".join(argv if argv is not None else sys.argv[1:])
    options = f"{seconds:g} s per phase, {args.rounds} round(s), {CHATS} chats, offline model"
    versions = f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(render(found, command=command.strip(), versions=versions, options=options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
