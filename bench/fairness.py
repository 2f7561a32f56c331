"""The fairness row: one config's message while another config holds hundreds of slow streams.

One `chatledger serve` worker with the `openai` provider, against a fake OpenAI-compatible model server in
this process that answers config B's model (`fast`) after MODEL_MS and holds config A's (`slow`) streams
open after their first chunk until the phase ends. First B alone sends its messages one at a time (the
baseline: B's model time plus the service's own); then A opens A_STREAMS streams at once, and B sends
the same messages again while A's admitted streams are held. The figure is how much later B's p99
answer comes than alone, against 50 ms. With each config's share of the worker's model calls
(CHATLEDGER_MODEL_CALLS_PER_CONFIG), A gets its share and 429 `model_calls_exceeded` for the rest;
without it (the contrast row, a share as large as the in-flight cap), A fills the worker and B is refused.

`python -m bench` runs it after its other HTTP rows; `python -m bench.fairness` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web

import ledger
from bench.load import percentiles_ms
from bench.processes import Child, Children, service_env, wait_ready
from bench.table import Row, render
from tests.redis_servers import RedisServer, free_ports

HOST = "127.0.0.1"
SLOW_MODEL, FAST_MODEL = "slow", "fast"
# B's model time: what a small real model takes to answer a short message.
MODEL_MS = 20.0
# A's streams opened at once, and the target: B's p99 at most this much later than alone.
A_STREAMS = 500
ADDED_MS_MAX = 50.0
# The worker's in-flight cap, the default: without shares, A's streams take all of it.
MAX_IN_FLIGHT = 100
CONTENT = "Tell me about foxes"


class FakeModel:
    """An OpenAI-compatible chat-completions server: B's model answers whole after MODEL_MS; A's streams
    send a first chunk, then wait for `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow_open = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") != SLOW_MODEL:
            await asyncio.sleep(MODEL_MS / 1000)
            return web.json_response(_completion(body))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.slow_open += 1
        try:
            await response.write(_chunk({"content": "Foxes"}))
            await self.release.wait()
            await response.write(
                _chunk({"content": " are quick."}) + _chunk({}, usage=True) + b"data: [DONE]\n\n"
            )
        finally:
            self.slow_open -= 1
        return response


def _completion(body: dict[str, object]) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Foxes are quick."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }


def _chunk(delta: dict[str, str], *, usage: bool = False) -> bytes:
    payload: dict[str, object] = {
        "object": "chat.completion.chunk",
        "choices": [] if usage else [{"index": 0, "delta": delta}],
    }
    if usage:
        payload["usage"] = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


class Phase(msgspec.Struct, frozen=True, kw_only=True):
    """B's answers alone and beside A's streams, and what A's streams got."""

    share: int
    alone: list[float]
    beside: list[float]
    beside_statuses: dict[int, int]
    a_statuses: dict[int, int]
    a_refused: list[float]

    @property
    def added_ms(self) -> float:
        return percentiles_ms(self.beside)[1] - percentiles_ms(self.alone)[1] if self.beside else float("inf")


async def measure(
    children: Children, client: ledger.RedisClient, redis_url: str, share: int, samples: int
) -> Phase:
    """A worker with each config's share set to `share`, B alone, then B beside A's streams."""
    fake = FakeModel()
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    fake_port, port = free_ports(2)
    await web.TCPSite(runner, HOST, fake_port).start()
    worker = _start_worker(children, redis_url, port, f"http://{HOST}:{fake_port}/v1", share)
    try:
        keys_a, keys_b = await _tenants(client)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            base = f"http://{HOST}:{port}"
            chat_b = await _chat(session, base, keys_b)
            alone = await _sequential(session, base, keys_b, chat_b, samples)
            chats_a = [await _chat(session, base, keys_a) for _ in range(8)]
            streams = [
                asyncio.create_task(_stream(session, base, keys_a, chats_a[i % len(chats_a)]))
                for i in range(A_STREAMS)
            ]
            await _settled(streams, fake, share)
            beside_answers = await _sequential(session, base, keys_b, chat_b, samples, statuses=True)
            fake.release.set()
            a_answers = await asyncio.gather(*streams)
    finally:
        children.stop([worker])
        await runner.cleanup()
    beside, beside_statuses = beside_answers
    return Phase(
        share=share,
        alone=alone[0],
        beside=beside,
        beside_statuses=beside_statuses,
        a_statuses=dict(Counter(status for status, _ in a_answers)),
        a_refused=[seconds for status, seconds in a_answers if status != 200],
    )


async def _settled(streams: Sequence[asyncio.Task[tuple[int, float]]], fake: FakeModel, share: int) -> None:
    """Until A's streams are either refused or held at the model (or the worker's cap is full)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = sum(task.done() for task in streams)
        if done + fake.slow_open >= len(streams) or fake.slow_open >= min(share, MAX_IN_FLIGHT):
            await asyncio.sleep(0.2)  # the stragglers' refusals
            return
        await asyncio.sleep(0.01)


async def _tenants(client: ledger.RedisClient) -> tuple[str, str]:
    tenants = ledger.TenantStore(client, ledger.Keyspace("cl"))
    keys = []
    for name, model in (("A", SLOW_MODEL), ("B", FAST_MODEL)):
        config = await tenants.create_config(agent_name=f"Agent {name}", company_name=name, model=model)
        keys.append((await tenants.issue_key(config.config_id)).api_key)
    return keys[0], keys[1]


async def _chat(session: aiohttp.ClientSession, base: str, api_key: str) -> str:
    async with session.post(
        f"{base}/chats/", json={"token_limit": 1e9}, headers={"X-API-Key": api_key}
    ) as response:
        chat_id: str = (await response.json())["chat_id"]
        return chat_id


async def _sequential(
    session: aiohttp.ClientSession,
    base: str,
    api_key: str,
    chat_id: str,
    samples: int,
    *,
    statuses: bool = False,
) -> tuple[list[float], dict[int, int]]:
    """B's messages one at a time: the latencies of the 200s, and every status."""
    latencies: list[float] = []
    seen: Counter[int] = Counter()
    body = {"chat_id": chat_id, "content": CONTENT}
    for _ in range(samples):
        started = time.perf_counter()
        async with session.post(
            f"{base}/chats/messages/", json=body, headers={"X-API-Key": api_key}
        ) as response:
            await response.read()
            seen[response.status] += 1
            if response.status == 200:
                latencies.append(time.perf_counter() - started)
    return latencies, dict(seen) if statuses else {}


async def _stream(session: aiohttp.ClientSession, base: str, api_key: str, chat_id: str) -> tuple[int, float]:
    """One of A's streams, read to its end: its status and the time to its answer's head."""
    started = time.perf_counter()
    headers = {"X-API-Key": api_key, "Accept": "text/event-stream"}
    body = {"chat_id": chat_id, "content": CONTENT, "stream": True}
    async with session.post(f"{base}/chats/messages/", json=body, headers=headers) as response:
        head_s = time.perf_counter() - started
        await response.read()
        return response.status, head_s


def _start_worker(children: Children, redis_url: str, port: int, model_url: str, share: int) -> Child:
    command = [sys.executable, "-m", "service", "serve", "--host", HOST, "--port", str(port)]
    settings = {
        "CHATLEDGER_PROVIDER": "openai",
        "CHATLEDGER_OPENAI_BASE_URL": model_url,
        "CHATLEDGER_OPENAI_MODEL": FAST_MODEL,
        "CHATLEDGER_OPENAI_READ_TIMEOUT_S": "120",
        "CHATLEDGER_OPENAI_TOTAL_TIMEOUT_S": "240",
        "CHATLEDGER_RESERVATION_TTL_S": "600",
        "CHATLEDGER_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "CHATLEDGER_MODEL_CALLS_PER_CONFIG": str(share),
        "CHATLEDGER_LOG_LEVEL": "warning",
    }
    child = children.start(f"chatledger-fairness-{share}", command, service_env(redis_url, **settings))
    wait_ready(f"http://{HOST}:{port}/readyz", [child])
    return child


async def rows(
    children: Children, client: ledger.RedisClient, redis_url: str, *, samples: int = 100
) -> list[Row]:
    """With the default share, then with a share as large as the in-flight cap (no share)."""
    shared = await measure(children, client, redis_url, share=32, samples=samples)
    unshared = await measure(children, client, redis_url, share=MAX_IN_FLIGHT, samples=samples)
    return [
        _row(shared, order=55, target="≤ 1"),
        _row(unshared, order=56, target="none: without shares, for contrast"),
    ]


def _row(phase: Phase, *, order: int, target: str) -> Row:
    alone50, alone99 = percentiles_ms(phase.alone)
    b_part = ", ".join(f"{n:,} × {status}" for status, n in sorted(phase.beside_statuses.items()))
    if phase.beside:
        p50, p99 = percentiles_ms(phase.beside)
        b_part = (
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({b_part}), p99 {phase.added_ms:.1f} ms later than alone"
        )
    a_part = ", ".join(f"{n:,} × {status}" for status, n in sorted(phase.a_statuses.items()))
    if phase.a_refused:
        a_part += (
            f"; its refusals answered in p99 {percentiles_ms(phase.a_refused)[1]:.1f} ms (all sent at once)"
        )
    share = (
        f"share {phase.share}" if phase.share < MAX_IN_FLIGHT else f"no share (= the cap, {MAX_IN_FLIGHT})"
    )
    return Row(
        order=order,
        figure=f"Fairness, 1 worker, {share}: config B's messages while config A opens {A_STREAMS} "
        "slow streams",
        ours=f"B: {b_part}. A: {a_part}",
        baseline=f"B alone: p50 {alone50:.1f} ms, p99 {alone99:.1f} ms (its model takes {MODEL_MS:g} ms); "
        f"target: at most {ADDED_MS_MAX:g} ms later",
        ratio=max(phase.added_ms, 0.0) / ADDED_MS_MAX,
        target=target,
    )


# --- `python -m bench.fairness`: these rows alone --------------------------------------------------------
async def _alone(samples: int, workdir: Path) -> list[Row]:
    with RedisServer() as server, Children(workdir) as children:
        client = ledger.connect(server.url)
        try:
            return await rows(children, client, server.url, samples=samples)
        finally:
            await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    from service.workers import loop_factory

    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="B's messages per phase (default 100)")
    parser.add_argument(
        "--smoke", action="store_true", help="5 messages per phase: checks it runs, not speed"
    )
    args = parser.parse_args(argv)
    samples = 5 if args.smoke else args.samples
    with (
        tempfile.TemporaryDirectory(prefix="chatledger-bench-") as workdir,
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        found = runner.run(_alone(samples, Path(workdir)))
    command = "python -m bench.fairness " + " ".join(argv if argv is not None else sys.argv[1:])
    options = f"{samples} messages of B per phase, {A_STREAMS} streams of A, `openai` on a fake model server"
    versions = f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(render(found, command=command.strip(), versions=versions, options=options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
