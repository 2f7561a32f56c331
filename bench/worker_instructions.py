"""Instructions a `chatledger serve` worker spends per message, counted by callgrind: an A/B of two
checkouts that a loaded machine cannot blur, as it blurs messages per second.

`python -m bench.worker_instructions CHECKOUT [CHECKOUT ...] [--messages N] [--rounds R] [--provider
openai] [--stream]` starts, for each checkout in turn and round after round, a redis-server on a free port
and one worker of that checkout (its own `.venv`, JSON logs) under `valgrind --tool=callgrind`, sends N
messages (8 at a time over 8 chats) or none, and stops it. The figure is (I(N) - I(0)) / N: the worker's
instructions per message, its start taken out. Each worker runs under valgrind for about a minute.

The worker answers with the offline model, or with `--provider openai` through the `openai` provider
from bench/fake_model.py (started once, outside valgrind: only the worker is counted); `--stream` asks
for every reply as Server-Sent Events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

import ledger
from bench.redis_instructions import callgrind_total
from bench.tenant import bench_tenant
from tests.redis_servers import RedisServer, free_ports

CHATS = 8
CONTENT = "Tell me about foxes and their dens"
READY_TIMEOUT_S = 300.0


async def _tenant(redis_url: str) -> tuple[str, list[str]]:
    client = ledger.connect(redis_url)
    try:
        return await bench_tenant(client, ledger.Keyspace("cl"), CHATS)
    finally:
        await client.aclose()


async def _send(port: int, api_key: str, chats: Sequence[str], messages: int, stream: bool) -> None:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as session:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)

        async def one(index: int) -> None:
            body: dict[str, object] = {"chat_id": chats[index % len(chats)], "content": CONTENT}
            if stream:
                body["stream"] = True
            async with session.post(f"{base}/chats/messages/", json=body) as response:
                text = await response.text()
            # A broken path must not be counted as a cheap one.
            if response.status != 200 or (stream and "event: done" not in text):
                raise RuntimeError(f"a message answered {response.status}: {text[-500:]}")

        for start in range(0, messages, CHATS):
            await asyncio.gather(*(one(i) for i in range(start, min(start + CHATS, messages))))


def count(checkout: Path, messages: int, model_url: str | None = None, stream: bool = False) -> int:
    """The instructions of one worker of `checkout` that served `messages` messages, start included;
    with `model_url`, through the `openai` provider on that server."""
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="chatledger-cg-") as workdir:
        api_key, chats = asyncio.run(_tenant(server.url))
        (port,) = free_ports(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}
        env.update(REDIS_URL=server.url, CHATLEDGER_LOG_FORMAT="json", PYTHONHASHSEED="0")
        if model_url is not None:
            env.update(
                CHATLEDGER_PROVIDER="openai",
                CHATLEDGER_OPENAI_BASE_URL=model_url,
                CHATLEDGER_OPENAI_MODEL="bench-model",
                CHATLEDGER_OPENAI_API_KEY="sk-bench",
            )
        out = Path(workdir) / "callgrind.out"
        python = str(checkout / ".venv" / "bin" / "python")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-m", "service"]
        command += ["serve", "--host", "127.0.0.1", "--port", str(port)]
        worker = subprocess.Popen(
            command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            asyncio.run(_send(port, api_key, chats, messages, stream))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=READY_TIMEOUT_S)
        return callgrind_total(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker_instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkouts", nargs="+", type=Path, help="checkouts with their own .venv")
    parser.add_argument("--messages", type=int, default=800, help="messages per measured run (default 800)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the checkouts (default 2)")
    parser.add_argument("--provider", choices=("offline", "openai"), default="offline")
    parser.add_argument("--stream", action="store_true", help="every reply as Server-Sent Events")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        model_url = None
        if args.provider == "openai":
            (model_port,) = free_ports(1)
            model = subprocess.Popen(
                [sys.executable, "-m", "bench.fake_model", "--port", str(model_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(model.wait, timeout=10)
            stack.callback(model.terminate)
            model_url = f"http://127.0.0.1:{model_port}/v1"
            _wait_for_port(model_port)
        _table(args.checkouts, args.rounds, args.messages, model_url, args.stream)
    return 0


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def _table(
    checkouts: Sequence[Path], rounds: int, messages: int, model_url: str | None, stream: bool
) -> None:
    print("| Round | Checkout | Instructions, start only | With messages | Per message |")
    print("| --- | --- | --- | --- | --- |")
    for round_ in range(1, rounds + 1):
        for checkout in checkouts:
            start = count(checkout.resolve(), 0, model_url, stream)
            loaded = count(checkout.resolve(), messages, model_url, stream)
            per_message = (loaded - start) / messages
            print(f"| {round_} | {checkout} | {start:,} | {loaded:,} | {per_message:,.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
