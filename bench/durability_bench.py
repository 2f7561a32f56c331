"""The cost of `CHATLEDGER_DURABILITY=replica`: messages/s and p99 against `none`, same run, same load.

A primary and one replica (redis-server on free ports of 127.0.0.1, the replica on loopback), then
`chatledger serve --workers 2` on the primary, once per mode, alternating for the run's rounds; each
mode gets the same chats and the same load. With `replica` every settle waits for the replica's
acknowledgement (ledger/durable.py), so the ratio is what that wait costs where the replica is as near
as it can be: a replica across a network adds its round trip on top.

`python -m bench` runs it after its other HTTP rows; `python -m bench.durability_bench` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import ledger
from bench import load
from bench.processes import Child, Children, service_env, wait_ready
from bench.table import Row, render
from tests.redis_servers import RedisServer, free_ports

KEYS = ledger.Keyspace("cl")
WORKERS = 2
MODES = ("none", "replica")
# The load: (port, API key, chat ids, seconds) -> result; bench/run.py's generator.
Generate = Callable[[int, str, Sequence[str], float], Awaitable[load.LoadResult]]


async def rows(
    children: Children, generate: Generate, *, seconds: float, warmup_seconds: float, rounds: int, chats: int
) -> list[Row]:
    """One row: messages/s and p99 with `replica` against `none` (the median round of each)."""
    replica_of = ["--replicaof", "127.0.0.1"]
    with RedisServer() as primary, RedisServer(extra_args=[*replica_of, str(primary.port)]):
        client = ledger.connect(primary.url)
        try:
            api_key, chat_ids = await _setup(client, chats)
            results: dict[str, list[load.LoadResult]] = {mode: [] for mode in MODES}
            for _round in range(rounds):
                for mode in MODES:
                    child, port = _start(children, primary.url, mode)
                    if warmup_seconds > 0:
                        await generate(port, api_key, chat_ids, warmup_seconds)
                    results[mode].append(await generate(port, api_key, chat_ids, seconds))
                    children.stop([child])
        finally:
            await client.aclose()
    durable, plain = (_median(results[mode]) for mode in ("replica", "none"))
    return [
        Row(
            order=55,
            figure=f"`POST /chats/messages/`, {WORKERS} workers, `CHATLEDGER_DURABILITY=replica` "
            "(one replica, loopback)",
            ours=_figure(durable),
            baseline=f"`CHATLEDGER_DURABILITY=none`, same primary and replica: {_figure(plain)}",
            ratio=durable.rate / plain.rate if plain.rate else 0.0,
            target="",
        ),
        Row(
            order=56,
            figure="`CHATLEDGER_DURABILITY=replica`, p99 latency of the same messages",
            ours=f"p99 {durable.p99_ms:.1f} ms",
            baseline=f"`none`: p99 {plain.p99_ms:.1f} ms",
            ratio=durable.p99_ms / plain.p99_ms if plain.p99_ms else 0.0,
            target="",
        ),
    ]


def _start(children: Children, redis_url: str, mode: str) -> tuple[Child, int]:
    """`chatledger serve` on the primary in durability `mode`, and its port, once it answers."""
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(WORKERS)]
    child = children.start(f"chatledger-{mode}", command, service_env(redis_url, CHATLEDGER_DURABILITY=mode))
    wait_ready(f"http://127.0.0.1:{port}/healthz", [child])
    return child, port


async def _setup(client: ledger.RedisClient, chats: int) -> tuple[str, list[str]]:
    tenants = ledger.TenantStore(client, KEYS)
    config = await tenants.create_config(agent_name="Bench Agent", company_name="Bench")
    api_key = (await tenants.issue_key(config.config_id)).api_key
    book = ledger.Ledger(client, KEYS)
    await book.start()
    limit = ledger.to_milli(1e12, positive=True)
    return api_key, [(await book.create_chat(config, limit)).chat_id for _ in range(chats)]


def _median(results: list[load.LoadResult]) -> load.LoadResult:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def _figure(result: load.LoadResult) -> str:
    errors = f", {result.errors} errors" if result.errors else ""
    return f"{result.rate:,.0f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms{errors}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.durability_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, alternating (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="load connections (default 64)")
    args = parser.parse_args(argv)

    async def generate(port: int, api_key: str, chat_ids: Sequence[str], seconds: float) -> load.LoadResult:
        url = f"http://127.0.0.1:{port}"
        return await load.run_aiohttp(
            url, api_key, chat_ids, seconds=seconds, connections=args.connections, max_requests=10_000_000
        )

    with (
        tempfile.TemporaryDirectory(prefix="chatledger-bench-") as workdir,
        Children(Path(workdir)) as children,
    ):
        table = asyncio.run(
            rows(children, generate, seconds=args.seconds, warmup_seconds=1.0, rounds=args.rounds, chats=64)
        )
    command = "python -m bench.durability_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    options = (
        f"load: aiohttp, {args.connections} connections, {args.seconds:g} s per run, {args.rounds} rounds"
    )
    print(render(table, command=command.strip(), versions="", options=options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
