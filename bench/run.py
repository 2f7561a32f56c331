"""`python -m bench`: one run, every figure against its baseline, one Markdown table.

The run owns everything it measures: a redis-server on a free port of 127.0.0.1 (tests/redis_servers.py,
never the machine's Redis on 6379), `chatledger serve` with the offline model (1, then 2 workers), the
bare baseline servers (bench/baseline.py) and the load generator (bench/load.py). Each phase is bounded
in time and in count, and every process is stopped when the run ends, whatever ends it.

Steps: messages/s against the bare handlers (same worker count, same load, same Redis), the round
trips of a message (MONITOR), Redis memory per stored message, history pages of a 1,000,000-message chat
against a 100-message one (and a deep page against the first), the slowest Redis call while the API was
loaded (SLOWLOG), overload (bench/overload.py), the `openai` provider on a fake model server against a
bare proxy (bench/upstream.py), one config's messages beside another's slow streams (bench/fairness.py),
`CHATLEDGER_DURABILITY=replica` against `none` (bench/durability_bench.py), and the ledger alone
against redis-benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import aiohttp
import msgspec

import ledger
from bench import (
    durability_bench,
    fairness,
    history_bench,
    ledger_bench,
    load,
    overload,
    redis_stats,
    upstream,
)
from bench.baseline import TRIVIAL_SCRIPT
from bench.processes import BenchError, Children, start_baseline, start_service
from bench.table import Row, render
from ledger.scripts import SCRIPT_NAMES, script_source
from service.workers import loop_factory
from tests.redis_servers import RedisServer, free_ports

KEYS = ledger.Keyspace("cl")


class Options(msgspec.Struct, frozen=True, kw_only=True):
    seconds: float = 10.0
    warmup_seconds: float = 3.0
    rounds: int = 1
    connections: int = 64
    chats: int = 64
    big_history: int = 1_000_000
    small_history: int = 100
    page_samples: int = 200
    monitor_messages: int = 100
    ledger_seconds: float = 10.0
    ledger_concurrency: int = 64
    ledger_pairs_max: int = 1_000_000
    benchmark_requests: int = 500_000
    fairness_samples: int = 100
    generator: str = "auto"
    # Only the smoke run's count bound matters for the aiohttp generator; wrk is bounded by time.
    requests_max: int = 10_000_000


SMOKE = Options(
    seconds=1.0,
    warmup_seconds=0.0,
    connections=4,
    chats=4,
    big_history=2_000,
    small_history=100,
    page_samples=3,
    monitor_messages=3,
    ledger_seconds=0.5,
    ledger_concurrency=4,
    ledger_pairs_max=200,
    benchmark_requests=2_000,
    fairness_samples=5,
    requests_max=2_000,
)


class Http(msgspec.Struct, kw_only=True):
    """Load results per (server, workers), one per round."""

    runs: dict[str, list[load.LoadResult]] = msgspec.field(default_factory=dict)

    def add(self, name: str, result: load.LoadResult) -> None:
        self.runs.setdefault(name, []).append(result)

    def median(self, name: str) -> load.LoadResult:
        """The round with the median rate (the whole round, so its latencies go with its rate)."""
        runs = sorted(self.runs[name], key=lambda r: r.rate)
        return runs[len(runs) // 2]


class Bench:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.rows: list[Row] = []
        self.http = Http()
        self.slowlog: history_bench.SlowLog | None = None

    async def run(self) -> list[Row]:
        with RedisServer() as redis_server, Children(self.workdir) as children:
            client = ledger.connect(redis_server.url)
            try:
                await self._run(redis_server, children, client)
            finally:
                await client.aclose()
        return self.rows

    async def _run(self, server: RedisServer, children: Children, client: ledger.RedisClient) -> None:
        tenants = ledger.TenantStore(client, KEYS)
        config = await tenants.create_config(agent_name="Bench Agent", company_name="Bench")
        api_key = (await tenants.issue_key(config.config_id)).api_key
        book = ledger.Ledger(client, KEYS)
        await book.start()
        chats = [
            (await book.create_chat(config, ledger.to_milli(1e12, positive=True))).chat_id
            for _ in range(self.options.chats)
        ]
        # Every phase that loads the API logs Redis's slow calls; the bench's own setup runs outside.
        shas = {hashlib.sha1(script_source(name).encode()).hexdigest(): name for name in SCRIPT_NAMES}
        shas[hashlib.sha1(TRIVIAL_SCRIPT.encode()).hexdigest()] = "trivial"
        slowlog = self.slowlog = history_bench.SlowLog(client, shas)
        for workers in (1, 2):
            port, bare_py_port, bare_pipe_port = free_ports(3)
            started = [start_service(children, server.url, port, workers)]
            started += start_baseline(children, server.url, bare_py_port, workers, "redis-py")
            started += start_baseline(children, server.url, bare_pipe_port, workers, "pipelined")
            memory_before = await redis_stats.stored_memory(client)
            targets = {"chatledger": port, "redis-py": bare_py_port, "pipelined": bare_pipe_port}
            await slowlog.start()
            for _round in range(self.options.rounds):
                for name, target_port in targets.items():
                    result = await self._load(client, target_port, api_key, chats)
                    self.http.add(f"{name}/{workers}", result)
            await slowlog.take()
            if workers == 1:
                await self._round_trips(server, port, tenants, config, chats[0])
                await self._api_memory(client, chats, memory_before)
                await self._history(client, book, config, api_key, port)
            children.stop(started)
        self._http_rows()
        o = self.options
        await slowlog.start()
        self.rows += await overload.rows(
            children, client, server.url, api_key, chats,
            seconds=o.seconds, warmup_seconds=o.warmup_seconds, rounds=o.rounds,
        )  # fmt: skip
        await slowlog.take()
        self.rows.append(_slowlog_row(slowlog))
        generate = upstream.generator(
            o.generator, api_key, chats, self.workdir, o.connections, o.requests_max
        )
        self.rows += await upstream.rows(
            children, server.url, api_key, chats, generate,
            seconds=o.seconds, warmup_seconds=o.warmup_seconds, rounds=o.rounds,
        )  # fmt: skip
        self.rows += await fairness.rows(children, client, server.url, samples=o.fairness_samples)
        # The cost of CHATLEDGER_DURABILITY=replica, on a primary and replica of its own.
        self.rows += await durability_bench.rows(
            children, self._generate, seconds=o.seconds, warmup_seconds=o.warmup_seconds, rounds=o.rounds,
            chats=o.chats,
        )  # fmt: skip
        self.rows.sort(key=lambda row: row.order)
        await self._ledger(server)

    async def _load(
        self, client: ledger.RedisClient, port: int, api_key: str, chats: Sequence[str]
    ) -> load.LoadResult:
        """A warm-up (discarded), then the measured run, with the Redis CPU time it took."""
        if self.options.warmup_seconds > 0:
            await self._generate(port, api_key, chats, self.options.warmup_seconds)
        cpu_before = await redis_stats.cpu_seconds(client)
        result = await self._generate(port, api_key, chats, self.options.seconds)
        cpu_s = await redis_stats.cpu_seconds(client) - cpu_before
        return msgspec.structs.replace(result, redis_cpu_s=cpu_s)

    async def _generate(
        self, port: int, api_key: str, chats: Sequence[str], seconds: float
    ) -> load.LoadResult:
        url = f"http://127.0.0.1:{port}"
        o = self.options
        use_wrk = o.generator == "wrk" or (o.generator == "auto" and load.wrk_available())
        if use_wrk:
            return await asyncio.to_thread(
                load.run_wrk,
                url,
                api_key,
                chats,
                seconds=seconds,
                connections=o.connections,
                workdir=self.workdir,
            )
        return await load.run_aiohttp(
            url, api_key, chats, seconds=seconds, connections=o.connections, max_requests=o.requests_max
        )

    def _http_rows(self) -> None:
        for workers in (1, 2):
            ours = self.http.median(f"chatledger/{workers}")
            label = f"`POST /chats/messages/`, {workers} worker{'s' if workers > 1 else ''}"
            for order, (name, baseline) in enumerate(
                [
                    ("redis-py", "bare aiohttp handler, redis-py EVALSHA"),
                    ("pipelined", "bare aiohttp handler, pipelined EVALSHA"),
                ]
            ):
                theirs = self.http.median(f"{name}/{workers}")
                target = "≥ 0.50" if workers == 2 and name == "redis-py" else ""
                self.rows.append(
                    Row(
                        order=10 + workers * 2 + order,
                        figure=label if order == 0 else f"{label}, against the fastest bare handler",
                        ours=_http_figure(ours),
                        baseline=f"{baseline}: {_http_figure(theirs)}",
                        ratio=ours.rate / theirs.rate if theirs.rate else 0.0,
                        target=target,
                    )
                )

    async def _round_trips(
        self,
        server: RedisServer,
        port: int,
        tenants: ledger.TenantStore,
        config: ledger.ConfigRecord,
        chat_id: str,
    ) -> None:
        """Messages one at a time under MONITOR, with a key no worker has seen: its first message
        shows the auth cache's miss, the others what every message costs."""
        fresh_key = (await tenants.issue_key(config.config_id)).api_key
        count = self.options.monitor_messages

        async def send() -> None:
            async with aiohttp.ClientSession(headers={"X-API-Key": fresh_key}) as session:
                for _ in range(count):
                    url = f"http://127.0.0.1:{port}{load.MESSAGE_PATH}"
                    async with session.post(url, data=load.body(chat_id)) as response:
                        await response.read()
                        if response.status != 200:
                            raise BenchError(f"a message answered {response.status}")

        # The bare baselines' script is the only user of this SHA: their stragglers are not ours.
        trivial_sha = hashlib.sha1(TRIVIAL_SCRIPT.encode()).hexdigest()
        seen = await redis_stats.monitor_round_trips(server.port, send, ignore=[trivial_sha])
        breakdown = ", ".join(f"{name} {n}" for name, n in sorted(seen.commands.items()))
        self.rows.append(
            Row(
                order=30,
                figure="Redis round trips per message",
                ours=f"{seen.round_trips / count:.2f} ({seen.round_trips} over {count} messages, "
                f"one at a time, a new API key: {breakdown})",
                baseline="the design: reserve + settle, auth from the worker's cache",
                ratio=seen.round_trips / count / 2,
                target="2 per message",
            )
        )

    async def _api_memory(
        self, client: ledger.RedisClient, chats: Sequence[str], before: tuple[int, int]
    ) -> None:
        """Everything the messages sent so far left in Redis (history, journal, hold records, context
        lists), per message, against the bytes of their contents; the connections' buffers, which the
        load's servers grew meanwhile and which are no record of a message, are shown apart."""
        after = await redis_stats.stored_memory(client)
        messages, size = await redis_stats.content_bytes(client, [KEYS.chat_messages(c) for c in chats])
        if messages:
            what = "Redis memory per message sent through the API (history, journal, hold records)"
            stored = after[0] - before[0]
            row = _memory_row(31, what, stored, messages, size)
            buffers = (after[1] - before[1]) / messages
            ours = f"{row.ours} (connection buffers apart: {buffers:+,.0f} B/message)"
            # The data lifecycle's bound: every record of a message within its content plus 150 bytes.
            met = stored / messages <= size / messages + 150
            target = f"≤ content + 150 B: {'met' if met else 'not met'}"
            self.rows.append(msgspec.structs.replace(row, ours=ours, target=target))

    async def _history(
        self,
        client: ledger.RedisClient,
        book: ledger.Ledger,
        config: ledger.ConfigRecord,
        api_key: str,
        port: int,
    ) -> None:
        o = self.options
        big = (await book.create_chat(config, 1000)).chat_id
        small = (await book.create_chat(config, 1000)).chat_id
        before = await redis_stats.used_memory(client)
        big_middle = await history_bench.fill_history(client, KEYS.chat_messages(big), o.big_history)
        after = await redis_stats.used_memory(client)
        small_middle = await history_bench.fill_history(client, KEYS.chat_messages(small), o.small_history)
        size = history_bench.filled_content_bytes(o.big_history)
        what = f"Redis memory per message, history stream alone ({o.big_history:,}-message chat)"
        self.rows.append(_memory_row(33, what, after - before, o.big_history, size))
        base = f"http://127.0.0.1:{port}/chats"
        pages = [
            ("first page (default: `limit=10`)", "", "", "≤ 2"),
            (
                "cursor page from the middle (`after=`)",
                f"?after={big_middle}",
                f"?after={small_middle}",
                "≤ 2",
            ),
            (
                "offset page in the middle (`offset=`)",
                f"?offset={o.big_history // 2}",
                f"?offset={o.small_history // 2}",
                "≤ 2",
            ),
        ]
        assert self.slowlog is not None
        await self.slowlog.start()
        async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as session:
            for n, (what, big_query, small_query, target) in enumerate(pages):
                big_times = await history_bench.time_page(
                    session, f"{base}/{big}/messages/{big_query}", o.page_samples
                )
                small_times = await history_bench.time_page(
                    session, f"{base}/{small}/messages/{small_query}", o.page_samples
                )
                self.rows.append(
                    Row(
                        order=20 + n,
                        figure=f"History {what}, {o.big_history:,}-message chat",
                        ours=_page_figure(big_times),
                        baseline=f"{o.small_history}-message chat: {_page_figure(small_times)}",
                        ratio=big_times.p50_ms / small_times.p50_ms if small_times.p50_ms else 0.0,
                        target=target,
                    )
                )
            self.rows.append(await _deep_page_row(session, f"{base}/{big}/messages/", o))
        await self.slowlog.take()

    async def _ledger(self, server: RedisServer) -> None:
        """The ledger's pairs against redis-benchmark, alternating round by round like the HTTP runs,
        each side's median round reported: this machine's speed drifts by tens of percent within
        minutes, and alternating keeps each ratio's two sides close in time."""
        if not ledger_bench.redis_benchmark_available():
            raise BenchError("redis-benchmark not found: apt-get install redis-tools")
        o = self.options
        sha = await ledger_bench.load_trivial_script(server.url)
        rounds: list[tuple[ledger_bench.PairsResult, float, float]] = []
        for _round in range(o.rounds):
            pairs = await ledger_bench.ledger_pairs(
                server.url,
                seconds=o.ledger_seconds,
                concurrency=o.ledger_concurrency,
                max_pairs=o.ledger_pairs_max,
                warmup_pairs=12,
            )
            evalsha, evalsha_cpu_us = await self._redis_benchmark(server, sha)
            rounds.append((pairs, evalsha, evalsha_cpu_us))
        pairs = sorted((r[0] for r in rounds), key=lambda p: p.rate)[len(rounds) // 2]
        evalsha, evalsha_cpu_us = sorted((r[1], r[2]) for r in rounds)[len(rounds) // 2]
        pair_cpu_us = 1e6 * pairs.redis_cpu_s / pairs.pairs if pairs.pairs else 0.0
        client_cpu_us = 1e6 * pairs.client_cpu_s / pairs.pairs if pairs.pairs else 0.0
        self.rows.append(
            Row(
                order=40,
                figure=f"Ledger alone: reserve+settle pairs/s (Python client, {o.ledger_concurrency} chats "
                "at once, 20-message context)",
                ours=f"{pairs.rate:,.0f} pairs/s, Redis CPU {pair_cpu_us:.0f} µs/pair, client CPU "
                f"{client_cpu_us:.0f} µs/pair",
                baseline=f"redis-benchmark EVALSHA of `return 1`, 50 clients: {evalsha:,.0f}/s, "
                f"so {evalsha / 2:,.0f} pairs/s; Redis CPU {evalsha_cpu_us:.1f} µs/call",
                ratio=pairs.rate / (evalsha / 2) if evalsha else 0.0,
                target="≥ 0.40",
            )
        )

    async def _redis_benchmark(self, server: RedisServer, sha: str) -> tuple[float, float]:
        """redis-benchmark's EVALSHA rate of the trivial script, and Redis's CPU µs per call."""
        requests = self.options.benchmark_requests
        client = ledger.connect(server.url)
        try:
            cpu_before = await redis_stats.cpu_seconds(client)
            evalsha = await asyncio.to_thread(
                ledger_bench.redis_benchmark_evalsha, server.port, sha, requests=requests
            )
            return evalsha, 1e6 * (await redis_stats.cpu_seconds(client) - cpu_before) / requests
        finally:
            await client.aclose()


def _http_figure(result: load.LoadResult) -> str:
    errors = f", {result.errors} errors" if result.errors else ""
    redis_us = 1e6 * result.redis_cpu_s / result.requests if result.requests else 0.0
    return (
        f"{result.rate:,.0f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
        f"Redis CPU {redis_us:.0f} µs/req{errors}"
    )


async def _deep_page_row(session: aiohttp.ClientSession, url: str, o: Options) -> Row:
    """A page of 50 at the middle offset of the big chat against its first page of 50: an offset is an
    id range, so depth should not show."""
    middle = o.big_history // 2
    deep = await history_bench.time_page(session, f"{url}?limit=50&offset={middle}", o.page_samples)
    first = await history_bench.time_page(session, f"{url}?limit=50", o.page_samples)
    return Row(
        order=23,
        figure=f"History page of 50 at offset {middle:,}, {o.big_history:,}-message chat",
        ours=_page_figure(deep),
        baseline=f"its first page of 50: {_page_figure(first)}",
        ratio=deep.p50_ms / first.p50_ms if first.p50_ms else 0.0,
        target="≤ 2",
    )


def _slowlog_row(slowlog: history_bench.SlowLog) -> Row:
    """The slowest Redis call of the API's requests while it was under the bench's load (SLOWLOG),
    against 5 ms; beside it the bare handlers' `return 1` in the same windows, whose slowest call is
    this machine's scheduling noise (SLOWLOG times wall clock: a preempted Redis shows in it)."""
    limit_us, floor_us = 5_000, history_bench.SLOWLOG_THRESHOLD_US
    ours = slowlog.slowest(excluding="trivial")
    trivial = max(
        (c for c in slowlog.calls if c.command == "trivial"), key=lambda c: c.duration_us, default=None
    )

    def figure(call: history_bench.SlowCall | None, over: int) -> str:
        if call is None:
            return f"none over {floor_us / 1000:.2f} ms"
        return f"max {call.duration_us / 1000:.2f} ms ({call.command}), {over} calls over 5 ms"

    return Row(
        order=24,
        figure="Slowest Redis call of the API's requests during the bench (SLOWLOG: loads, pages, overload)",
        ours=figure(ours, slowlog.over(limit_us, excluding="trivial"))
        + "; of history pages: "
        + figure(slowlog.slowest(only="history"), slowlog.over(limit_us, only="history")),
        baseline="the target, 5 ms; the bare handlers' `return 1` in the same windows: "
        + figure(trivial, slowlog.over(limit_us, only="trivial")),
        ratio=(ours.duration_us if ours else floor_us) / limit_us,
        target="≤ 1",
    )


def _page_figure(times: history_bench.PageTimes) -> str:
    return f"p50 {times.p50_ms:.2f} ms, p99 {times.p99_ms:.2f} ms"


def _memory_row(order: int, figure: str, delta: int, messages: int, size: int) -> Row:
    per_message, raw = delta / messages, size / messages
    return Row(
        order=order,
        figure=figure,
        ours=f"{per_message:,.0f} B/message",
        baseline=f"raw content: {raw:,.0f} B/message",
        ratio=per_message / raw if raw else 0.0,
        target="",
    )


def _versions() -> str:
    def first_line(command: list[str]) -> str:
        if shutil.which(command[0]) is None:
            return f"{command[0]}: not installed"
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    return "; ".join(
        [
            f"{os.cpu_count()} CPUs",
            f"Python {platform.python_version()}",
            first_line(["redis-server", "--version"]),
            first_line(["wrk", "--version"]),
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts: checks the runner works, not speed"
    )
    parser.add_argument("--seconds", type=float, help="length of each measured load run (default 10)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="load runs per server, and ledger runs against redis-benchmark, alternating; the median "
        "round of each is reported (default 1)",
    )
    parser.add_argument("--history", type=int, help="messages of the big chat (default 1,000,000)")
    parser.add_argument(
        "--load", choices=("auto", "wrk", "aiohttp"), help="load generator (default: wrk if found)"
    )
    return parser


def options_from(args: argparse.Namespace) -> Options:
    options = SMOKE if args.smoke else Options()
    changes = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "big_history": args.history,
        "generator": args.load,
    }
    return msgspec.structs.replace(options, **{k: v for k, v in changes.items() if v is not None})


def _stop_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every child is stopped on the way out."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = options_from(args)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="chatledger-bench-") as workdir:
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                rows = runner.run(Bench(options, Path(workdir)).run())
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    print(render(rows, command=command.strip(), versions=_versions(), options=_describe(options)))
    return 0


def _describe(options: Options) -> str:
    generator = (
        options.generator if options.generator != "auto" else ("wrk" if load.wrk_available() else "aiohttp")
    )
    rounds = f", median of {options.rounds} rounds" if options.rounds > 1 else ""
    return (
        f"load: {generator}, {options.connections} connections, {options.seconds:g} s per run after "
        f"{options.warmup_seconds:g} s of warm-up{rounds}, {options.chats} chats; offline model; "
        f"INFO-level JSON logs; Redis, servers and load generator on the same machine"
    )
