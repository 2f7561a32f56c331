"""The fairness row: one config's slow replies do not slow another config's messages.

One worker of `chatledger serve` with the `openai` provider, at its default settings, on the fake model
server (bench/fake_model.py). Config A asks for `slow-model`, which answers after 2 s; config B for the
normal one. First B alone: wrk sends B's messages one at a time (one connection) and its latencies are
the baseline. Then the same while A's SLOW_CLIENTS clients each send streamed messages in a loop, as
many as it takes to hold every connection a config may use (a client answered 429 waits its
Retry-After, as clients should, and 503 `overloaded` when the worker's in-flight cap is reached).
Target: B's p99 with A at most 50 ms above B's p99 alone.

`python -m bench` runs it after the upstream rows; `python -m bench.fairness` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import aiohttp

import ledger
from bench import load
from bench.processes import Children
from bench.table import Row, render
from bench.upstream import HOST, start_fake_model, start_openai_service
from tests.redis_servers import RedisServer, free_ports

SLOW_CLIENTS = 500
# A's chats (its clients rotate over them) and the most B's p99 may grow, in milliseconds.
SLOW_CHATS = 50
MARGIN_MS = 50.0


async def _slow_client(
    session: aiohttp.ClientSession, url: str, chat_id: str, statuses: Counter[int]
) -> None:
    """Streamed messages one after another; a refusal waits its Retry-After, plus up to half a second
    more, as clients spread their retries."""
    while True:
        try:
            async with session.post(url, data=load.body(chat_id, stream=True)) as response:
                await response.read()
                statuses[response.status] += 1
                if response.status != 200:
                    retry_after_s = float(response.headers.get("Retry-After", "1"))
                    await asyncio.sleep(retry_after_s + random.uniform(0, 0.5))
        except aiohttp.ClientError:
            statuses[0] += 1
            await asyncio.sleep(1)


async def rows(children: Children, client: ledger.RedisClient, redis_url: str, workdir: Path,
               seconds: float) -> list[Row]:  # fmt: skip
    keys = ledger.Keyspace("cl")
    tenants = ledger.TenantStore(client, keys)
    book = ledger.Ledger(client, keys)
    await book.start()
    slow = await tenants.create_config(agent_name="Slow", company_name="A", model="slow-model")
    fast = await tenants.create_config(agent_name="Fast", company_name="B")
    slow_key = (await tenants.issue_key(slow.config_id)).api_key
    fast_key = (await tenants.issue_key(fast.config_id)).api_key
    budget = ledger.to_milli(1e12, positive=True)
    slow_chats = [(await book.create_chat(slow, budget)).chat_id for _ in range(SLOW_CHATS)]
    fast_chat = (await book.create_chat(fast, budget)).chat_id
    model_port, port = free_ports(2)
    started = [start_fake_model(children, model_port)]
    try:
        started.append(start_openai_service(children, redis_url, port, model_port))
        url = f"http://{HOST}:{port}"

        async def fast_run() -> load.LoadResult:
            if not load.wrk_available():
                return await load.run_aiohttp(
                    url, fast_key, [fast_chat], seconds=seconds, connections=1, max_requests=10_000_000
                )
            return await asyncio.to_thread(
                load.run_wrk, url, fast_key, [fast_chat], seconds=seconds, connections=1, workdir=workdir
            )

        alone = await fast_run()
        statuses: Counter[int] = Counter()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, headers={"X-API-Key": slow_key}) as session:
            clients = [
                asyncio.create_task(
                    _slow_client(session, url + load.MESSAGE_PATH, slow_chats[n % SLOW_CHATS], statuses)
                )
                for n in range(SLOW_CLIENTS)
            ]
            await asyncio.sleep(1.0)  # A's calls reach the model and hold their connections
            loaded = await fast_run()
            for task in clients:
                task.cancel()
            for task in clients:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        children.stop(started)
    return [_row(alone, loaded, statuses)]


def _row(alone: load.LoadResult, loaded: load.LoadResult, statuses: Counter[int]) -> Row:
    others = ", ".join(f"{n:,} × {status or 'socket error'}" for status, n in sorted(statuses.items()))
    errors = f", {loaded.errors} errors" if loaded.errors else ""
    return Row(
        order=70,
        figure=f"Fairness, 1 worker: config B's messages while config A's {SLOW_CLIENTS} clients keep slow "
        "streams going (2 s replies), p99 over B's p99 alone",
        ours=f"B: p50 {loaded.p50_ms:.1f} ms, p99 {loaded.p99_ms:.1f} ms over {loaded.requests:,} messages"
        f"{errors}; A's answers: {others} (429 `model_calls_exceeded` past its model calls)",
        baseline=f"B alone: p50 {alone.p50_ms:.1f} ms, p99 {alone.p99_ms:.1f} ms; the target, B alone + "
        f"{MARGIN_MS:g} ms",
        ratio=loaded.p99_ms / (alone.p99_ms + MARGIN_MS),
        target="≤ 1",
    )


# --- `python -m bench.fairness`: this row alone -------------------------------------------------------------
async def _alone(seconds: float, workdir: Path) -> list[Row]:
    with RedisServer() as server, Children(workdir) as children:
        client = ledger.connect(server.url)
        try:
            return await rows(children, client, server.url, workdir, seconds)
        finally:
            await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    from service.workers import loop_factory

    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    parser.add_argument("--smoke", action="store_true", help="1 s runs: checks it runs, not speed")
    args = parser.parse_args(argv)
    seconds = 1.0 if args.smoke else args.seconds
    with (
        tempfile.TemporaryDirectory(prefix="chatledger-bench-") as workdir,
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        found = runner.run(_alone(seconds, Path(workdir)))
    command = "python -m bench.fairness " + " ".join(argv if argv is not None else sys.argv[1:])
    versions = f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(render(found, command=command.strip(), versions=versions, options=f"{seconds:g} s per run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
