"""Instructions a `chatledger serve` worker spends per message, counted by callgrind: an A/B of two
checkouts that a loaded machine cannot blur, as it blurs messages per second.

`python -m bench.worker_instructions CHECKOUT [CHECKOUT ...] [--messages N] [--rounds R]` starts, for each
checkout in turn and round after round, a redis-server on a free port and one worker of that checkout (its
own `.venv`, the offline model, JSON logs) under `valgrind --tool=callgrind`, sends N messages (8 at a
time over 8 chats) or none, and stops it. The figure is (I(N) - I(0)) / N: the worker's instructions per
message, its start taken out. Each worker runs under valgrind for about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

import ledger
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


async def _send(port: int, api_key: str, chats: Sequence[str], messages: int) -> None:
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
            body = {"chat_id": chats[index % len(chats)], "content": CONTENT}
            async with session.post(f"{base}/chats/messages/", json=body) as response:
                assert response.status == 200, await response.text()

        for start in range(0, messages, CHATS):
            await asyncio.gather(*(one(i) for i in range(start, min(start + CHATS, messages))))


def count(checkout: Path, messages: int) -> int:
    """The instructions of one worker of `checkout` that served `messages` messages, start included."""
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="chatledger-cg-") as workdir:
        api_key, chats = asyncio.run(_tenant(server.url))
        (port,) = free_ports(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}
        env.update(REDIS_URL=server.url, CHATLEDGER_LOG_FORMAT="json", PYTHONHASHSEED="0")
        out = Path(workdir) / "callgrind.out"
        python = str(checkout / ".venv" / "bin" / "python")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-m", "service"]
        command += ["serve", "--host", "127.0.0.1", "--port", str(port)]
        worker = subprocess.Popen(
            command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            asyncio.run(_send(port, api_key, chats, messages))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=READY_TIMEOUT_S)
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"callgrind wrote no total for {checkout}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker_instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkouts", nargs="+", type=Path, help="checkouts with their own .venv")
    parser.add_argument("--messages", type=int, default=800, help="messages per measured run (default 800)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the checkouts (default 2)")
    args = parser.parse_args(argv)
    print("| Round | Checkout | Instructions, start only | With messages | Per message |")
    print("| --- | --- | --- | --- | --- |")
    for round_ in range(1, args.rounds + 1):
        for checkout in args.checkouts:
            start = count(checkout.resolve(), 0)
            loaded = count(checkout.resolve(), args.messages)
            per_message = (loaded - start) / args.messages
            print(f"| {round_} | {checkout} | {start:,} | {loaded:,} | {per_message:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
