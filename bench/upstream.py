"""The upstream rows: the `openai` provider against a model server, beside the limit of its stack.

A fast fake OpenAI-compatible server (bench/fake_model.py) stands in for the model. One worker of
`chatledger serve` with the `openai` provider talks to it; so does the bare proxy (bench/proxy.py: one
EVALSHA and one pooled aiohttp call per message, the model's answer relayed as it is). One worker of
`chatledger serve` with the offline model is measured in the same rounds. Each is loaded like the other
HTTP rows (wrk, 64 connections, chats whose history is full, so every message sends a 20-message
context), non-streamed and streamed, alternating round by round and, within a round, slice by slice (each
target's 10 s as five 2 s slices taken in turn), each side's median round shown, with the worker's CPU
time per message (user + system, from /proc).

Targets, as same-run ratios: the `openai` path at least 0.5 of the bare proxy (non-streamed and
streamed), at least 0.8 of the offline model's messages/s, and streamed at least 0.7 of non-streamed.

`python -m bench` runs it after its other HTTP rows; `python -m bench.upstream` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import msgspec

import ledger
from bench import load
from bench.processes import BenchError, Child, Children, service_env, wait_log, wait_ready
from bench.table import Row, render
from bench.tenant import bench_tenant
from tests.redis_servers import RedisServer, free_ports

HOST = "127.0.0.1"
CHATS = 64
# A measured run is cut in this many slices, each target's taken in turn (whole seconds: wrk's unit).
SLICES = 5
# Messages each chat gets before the first measured run, so every message sends a full context.
FILL_MESSAGES = 24
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class Measured(msgspec.Struct, frozen=True, kw_only=True):
    load: load.LoadResult
    # The CPU seconds (user + system) of the server's process over the measured run, and of the fake
    # model server's (it shares the machine's cores with the server it answers).
    cpu_s: float
    model_cpu_s: float = 0.0

    @property
    def cpu_us_per_message(self) -> float:
        return 1e6 * self.cpu_s / self.load.requests if self.load.requests else 0.0

    @property
    def model_cpu_us_per_message(self) -> float:
        return 1e6 * self.model_cpu_s / self.load.requests if self.load.requests else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all its threads."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


class Targets(msgspec.Struct, frozen=True, kw_only=True):
    """What is loaded, by name: (port, the pid whose CPU is measured, stream)."""

    servers: dict[str, tuple[int, int, bool]]


def start_fake_model(children: Children, port: int) -> Child:
    command = [sys.executable, "-m", "bench.fake_model", "--port", str(port)]
    child = children.start("fake-model", command, service_env("redis://unused"))
    wait_log(child, "listening")
    return child


# These rows measure one config's throughput, not its share of a worker's model calls (bench/fairness.py
# does): the load's connections, ending and starting slice by slice, must not meet the per-config limit.
UNLIMITED = {"CHATLEDGER_MODEL_CALLS_PER_CONFIG": "100000", "CHATLEDGER_MAX_IN_FLIGHT": "100000"}


def start_offline_service(children: Children, redis_url: str, port: int) -> Child:
    """`chatledger serve`, one worker, with the offline model."""
    command = [sys.executable, "-m", "service", "serve", "--host", HOST, "--port", str(port)]
    child = children.start("chatledger-offline", command, service_env(redis_url, **UNLIMITED))
    wait_ready(f"http://{HOST}:{port}/healthz", [child])
    return child


def start_openai_service(children: Children, redis_url: str, port: int, model_port: int) -> Child:
    """`chatledger serve`, one worker, with the `openai` provider on the fake model server."""
    command = [sys.executable, "-m", "service", "serve", "--host", HOST, "--port", str(port)]
    env = service_env(
        redis_url,
        CHATLEDGER_PROVIDER="openai",
        CHATLEDGER_OPENAI_BASE_URL=f"http://{HOST}:{model_port}/v1",
        CHATLEDGER_OPENAI_MODEL="bench-model",
        CHATLEDGER_OPENAI_API_KEY="sk-bench",
        **UNLIMITED,
    )
    child = children.start("chatledger-openai", command, env)
    wait_ready(f"http://{HOST}:{port}/healthz", [child])
    return child


def start_proxy(children: Children, redis_url: str, port: int, model_port: int) -> Child:
    command = [sys.executable, "-m", "bench.proxy", "--port", str(port), "--redis-url", redis_url]
    command += ["--model-url", f"http://{HOST}:{model_port}/v1"]
    child = children.start("bare-proxy", command, service_env(redis_url))
    wait_ready(f"http://{HOST}:{port}/healthz", [child])
    return child


Generate = Callable[[int, bool, float], Awaitable[load.LoadResult]]


async def rows(
    children: Children,
    redis_url: str,
    api_key: str,
    chat_ids: Sequence[str],
    generate: Generate,
    *,
    seconds: float,
    warmup_seconds: float,
    rounds: int = 1,
) -> list[Row]:
    """Start the fake model, the three servers, measure them alternating; the rows."""
    model_port, offline_port, openai_port, proxy_port = free_ports(4)
    started = [start_fake_model(children, model_port)]
    try:
        started.append(start_offline_service(children, redis_url, offline_port))
        started.append(start_openai_service(children, redis_url, openai_port, model_port))
        started.append(start_proxy(children, redis_url, proxy_port, model_port))
        model, offline, openai, proxy = (child.popen.pid for child in started)
        targets = {
            "offline": (offline_port, offline, False),
            "openai": (openai_port, openai, False),
            "openai-stream": (openai_port, openai, True),
            "proxy": (proxy_port, proxy, False),
            "proxy-stream": (proxy_port, proxy, True),
        }
        for name, (port, _pid, stream) in targets.items():
            await check(port, api_key, chat_ids[0], stream=stream, what=name)
        await fill(openai_port, api_key, chat_ids)
        runs: dict[str, list[Measured]] = {name: [] for name in targets}
        for _round in range(rounds):
            for port, _pid, stream in targets.values():
                if warmup_seconds > 0:
                    await generate(port, stream, warmup_seconds)
            # Each target's run in slices, taken in turn: the machine's drift then weighs on all alike.
            slices = max(1, min(SLICES, int(seconds)))
            measured: dict[str, list[Measured]] = {name: [] for name in targets}
            for _slice in range(slices):
                for name, (port, pid, stream) in targets.items():
                    before, model_before = cpu_seconds(pid), cpu_seconds(model)
                    result = await generate(port, stream, seconds / slices)
                    cpu_s, model_cpu_s = cpu_seconds(pid) - before, cpu_seconds(model) - model_before
                    measured[name].append(Measured(load=result, cpu_s=cpu_s, model_cpu_s=model_cpu_s))
            for name, parts in measured.items():
                runs[name].append(_joined(parts))
    finally:
        children.stop(started)
    return _rows({name: sorted(r, key=lambda m: m.load.rate)[len(r) // 2] for name, r in runs.items()})


def _joined(parts: Sequence[Measured]) -> Measured:
    """Slices of one run as one: counts and times added; p50 the slices' median, p99 their highest."""
    results = [part.load for part in parts]
    p50s = sorted(result.p50_ms for result in results)
    joined = msgspec.structs.replace(
        results[0],
        requests=sum(result.requests for result in results),
        seconds=sum(result.seconds for result in results),
        p50_ms=p50s[len(p50s) // 2],
        p99_ms=max(result.p99_ms for result in results),
        errors=sum(result.errors for result in results),
    )
    return Measured(
        load=joined,
        cpu_s=sum(part.cpu_s for part in parts),
        model_cpu_s=sum(part.model_cpu_s for part in parts),
    )


async def check(port: int, api_key: str, chat_id: str, *, stream: bool, what: str) -> None:
    """One message, answered 200 and, streamed, ending with its `done` event: a broken path would
    otherwise be measured as a fast one."""
    url = f"http://{HOST}:{port}{load.MESSAGE_PATH}"
    async with (
        aiohttp.ClientSession(headers={"X-API-Key": api_key}) as session,
        session.post(url, data=load.body(chat_id, stream=stream)) as response,
    ):
        text = await response.text()
    if response.status != 200:
        raise BenchError(f"{what}: a message answered {response.status}: {text[:500]}")
    if stream and "proxy" not in what and "event: done" not in text:
        raise BenchError(f"{what}: the stream did not end with its done event: {text[-500:]}")


async def fill(port: int, api_key: str, chat_ids: Sequence[str]) -> None:
    """FILL_MESSAGES messages to each chat, so the first measured message already sends a full context."""
    url = f"http://{HOST}:{port}{load.MESSAGE_PATH}"
    async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as session:

        async def one(chat_id: str) -> None:
            for _ in range(FILL_MESSAGES):
                async with session.post(url, data=load.body(chat_id)) as response:
                    await response.read()

        await asyncio.gather(*(one(chat_id) for chat_id in chat_ids))


def _figure(measured: Measured) -> str:
    result = measured.load
    errors = f", {result.errors} errors" if result.errors else ""
    # The offline model makes no call: the fake's CPU then is its idle ticks, not worth a figure.
    model = measured.model_cpu_us_per_message
    model_cpu = f" (model server {model:.0f})" if model >= 1 else ""
    return (
        f"{result.rate:,.0f} msg/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
        f"worker CPU {measured.cpu_us_per_message:.0f} µs/msg{model_cpu}{errors}"
    )


def _rows(median: dict[str, Measured]) -> list[Row]:
    def ratio(ours: str, theirs: str) -> float:
        rate = median[theirs].load.rate
        return median[ours].load.rate / rate if rate else 0.0

    pairs = [
        ("openai", "proxy", "`openai` provider, non-streamed, 1 worker", "bare proxy (EVALSHA + pooled "
         "aiohttp call)", "≥ 0.50"),
        ("openai-stream", "proxy-stream", "`openai` provider, streamed, 1 worker", "bare proxy relaying the "
         "model's SSE", "≥ 0.50"),
        ("openai", "offline", "`openai` provider, non-streamed, against the offline model", "offline model, "
         "1 worker", "≥ 0.80"),
        ("openai-stream", "openai", "`openai` provider, streamed against non-streamed", "`openai` "
         "provider, non-streamed", "≥ 0.70"),
    ]  # fmt: skip
    return [
        Row(
            order=60 + n,
            figure=f"{figure} (fake model server, 20-message context)",
            ours=_figure(median[ours]),
            baseline=f"{baseline}: {_figure(median[theirs])}",
            ratio=ratio(ours, theirs),
            target=target,
        )
        for n, (ours, theirs, figure, baseline, target) in enumerate(pairs)
    ]


def generator(options_generator: str, api_key: str, chat_ids: Sequence[str], workdir: Path,
              connections: int, requests_max: int) -> Generate:  # fmt: skip
    """The load of the other HTTP rows (wrk when found), as a function of (port, stream, seconds)."""
    use_wrk = options_generator == "wrk" or (options_generator == "auto" and load.wrk_available())

    async def generate(port: int, stream: bool, seconds: float) -> load.LoadResult:
        url = f"http://{HOST}:{port}"
        if use_wrk:
            return await asyncio.to_thread(
                load.run_wrk, url, api_key, chat_ids,
                seconds=seconds, connections=connections, workdir=workdir, stream=stream,
            )  # fmt: skip
        return await load.run_aiohttp(
            url, api_key, chat_ids, seconds=seconds, connections=connections, max_requests=requests_max,
            stream=stream,
        )  # fmt: skip

    return generate


# --- `python -m bench.upstream`: these rows alone ----------------------------------------------------------
async def _alone(args: argparse.Namespace, workdir: Path) -> list[Row]:
    keys = ledger.Keyspace("cl")
    with RedisServer() as server, Children(workdir) as children:
        client = ledger.connect(server.url)
        try:
            api_key, chat_ids = await bench_tenant(client, keys, CHATS)
            requests_max = 2_000 if args.smoke else 10_000_000
            generate = generator(args.load, api_key, chat_ids, workdir, args.connections, requests_max)
            seconds, warmup = (1.0, 0.0) if args.smoke else (args.seconds, args.warmup)
            return await rows(
                children, server.url, api_key, chat_ids, generate,
                seconds=seconds, warmup_seconds=warmup, rounds=args.rounds,
            )  # fmt: skip
        finally:
            await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    from service.workers import loop_factory

    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of each measured run (default 10)"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the median one is shown (default 1)")
    parser.add_argument("--connections", type=int, default=64, help="load connections (default 64)")
    parser.add_argument("--load", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--smoke", action="store_true", help="1 s runs: checks it runs, not speed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chatledger-bench-") as workdir:
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                found = runner.run(_alone(args, Path(workdir)))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    command = "python -m bench.upstream " + " ".join(argv if argv is not None else sys.argv[1:])
    options = (
        f"{'smoke' if args.smoke else f'{args.seconds:g} s'} per run, {args.rounds} round(s), "
        f"{args.connections} connections, {CHATS} chats"
    )
    versions = f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(render(found, command=command.strip(), versions=versions, options=options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
