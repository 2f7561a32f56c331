"""Instructions Redis spends per reserve+settle pair of the ledger, counted by callgrind: an A/B of two
checkouts' Lua scripts that a loaded machine cannot blur, as it blurs pairs per second.

`python -m bench.redis_instructions CHECKOUT [CHECKOUT ...] [--pairs N] [--rounds R]` starts, for each
checkout in turn and round after round, a redis-server on a free port under `valgrind --tool=callgrind`,
and a driver in that checkout's Python (its `.venv` when it has one, with the checkout first on the path,
so its own `ledger` loads its own scripts and packs its own arguments). The driver gives the ledger
bench's chats (bench/ledger_bench.py: 64 at once, its pair of a 20-message context, a question and a
reply) a full context, the counters are zeroed (`callgrind_control -z`), the driver runs N more pairs,
and the counters are dumped (`callgrind_control -d`): the figure is the dump's total over N, Redis's
instructions per pair with nothing else counted but its timers in the meantime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

CHATS = 64
# Pairs per chat before the count: ten fill the 20-message context.
WARMUP_PAIRS = 12
# Measured pairs: 32 per chat, so the work a chat does every so many pairs (a journal fold every 16,
# with the default window) is counted in its share.
PAIRS = 2048
READY_TIMEOUT_S = 120.0
DRIVER_TIMEOUT_S = 1800.0
REDIS_SERVER = "/usr/bin/redis-server"
# The driver runs this file in the checkout's Python under this name (runpy), so it imports that
# checkout's `ledger` and `bench.ledger_bench`, not this checkout's.
DRIVER_NAME = "__redis_instructions_driver__"


async def _drive(redis_url: str, chats: int, warmup: int, pairs: int) -> None:
    """In the measured checkout's Python: create the chats, warm them up, say `warm`, wait for a line
    on stdin (the counters are zeroed meanwhile), run `pairs` pairs and say `done`."""
    import ledger
    from bench.ledger_bench import _pair

    client = ledger.connect(redis_url)
    try:
        keys = ledger.Keyspace("clbench")
        config = await ledger.TenantStore(client, keys).create_config(
            agent_name="Bench", company_name="Bench"
        )
        book = ledger.Ledger(client, keys)
        await book.start()
        chat_ids = [(await book.create_chat(config, 10**15)).chat_id for _ in range(chats)]

        async def run(chat_id: str, count: int) -> None:
            for _ in range(count):
                await _pair(book, config, chat_id)

        await asyncio.gather(*(run(chat_id, warmup) for chat_id in chat_ids))
        print("warm", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        share, extra = divmod(pairs, chats)
        await asyncio.gather(*(run(chat_id, share + (i < extra)) for i, chat_id in enumerate(chat_ids)))
        print("done", flush=True)
    finally:
        await client.aclose()


def _free_port() -> int:
    from tests.redis_servers import free_port

    return free_port()


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=120)


def _wait_for_ping(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server under valgrind exited with {process.returncode}")
        try:
            with redis.Redis(port=port, socket_timeout=5) as client:
                if client.ping():
                    return
        except redis.RedisError:
            pass
        time.sleep(0.5)
    raise RuntimeError("redis-server under valgrind did not answer PING in time")


def callgrind_total(dump: Path) -> int:
    """The instructions a callgrind output file counts in all."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {dump}")


def _python(checkout: Path) -> str:
    own = checkout / ".venv" / "bin" / "python"
    return str(own) if own.is_file() else sys.executable


@contextlib.contextmanager
def _server_under_callgrind(workdir: str) -> Iterator[tuple[int, int]]:
    """A redis-server on a free port under callgrind, writing into `workdir`: (port, pid)."""
    port = _free_port()
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={Path(workdir) / 'callgrind.out'}"]
    command += [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", workdir, "--logfile", str(Path(workdir) / "redis.log")]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_ping(port, server)
        yield port, server.pid
    finally:
        try:
            with redis.Redis(port=port, socket_timeout=30) as client:
                client.shutdown(nosave=True)
        except redis.RedisError:
            pass  # the connection drops as the server exits
        try:
            server.wait(timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _drive_and_count(checkout: Path, port: int, pid: int, argv: list[str]) -> None:
    """Run the driver in the checkout's Python; zero the counters once it is warm, dump them once done."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLEDGER_", "REDIS_"))}
    env["PYTHONPATH"] = str(checkout)
    run = f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name={DRIVER_NAME!r})"
    command = [_python(checkout), "-c", run, f"redis://127.0.0.1:{port}/0", *argv]
    with subprocess.Popen(
        command, cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as driver:
        stdin, stdout = driver.stdin, driver.stdout
        assert stdin is not None
        assert stdout is not None
        if stdout.readline().strip() != "warm":
            raise RuntimeError(f"the driver of {checkout} failed during the warm-up")
        _callgrind_control("-z", pid)
        stdin.write("go\n")
        stdin.flush()
        if stdout.readline().strip() != "done":
            raise RuntimeError(f"the driver of {checkout} failed during the measured pairs")
        _callgrind_control("-d", pid)
        stdin.close()
        driver.wait(timeout=DRIVER_TIMEOUT_S)


def count(checkout: Path, pairs: int, *, chats: int = CHATS, warmup: int = WARMUP_PAIRS) -> int:
    """Redis's instructions over `pairs` pairs of `checkout`'s ledger, its chats warmed up first."""
    with tempfile.TemporaryDirectory(prefix="chatledger-rcg-") as workdir:
        with _server_under_callgrind(workdir) as (port, pid):
            _drive_and_count(checkout, port, pid, [str(chats), str(warmup), str(pairs)])
        # `callgrind_control -d` writes the first numbered dump; callgrind.out itself is the server's exit.
        return callgrind_total(Path(workdir) / "callgrind.out.1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.redis_instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkouts", nargs="+", type=Path, help="checkouts (their .venv, else this Python)")
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"measured pairs per run (default {PAIRS})")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the checkouts (default 2)")
    parser.add_argument("--chats", type=int, default=CHATS, help=f"chats at once (default {CHATS})")
    args = parser.parse_args(argv)
    per_pair: dict[Path, list[float]] = {checkout: [] for checkout in args.checkouts}
    print("| Round | Checkout | Instructions | Per pair |")
    print("| --- | --- | --- | --- |")
    for round_ in range(1, args.rounds + 1):
        for checkout in args.checkouts:
            total = count(checkout.resolve(), args.pairs, chats=args.chats)
            per_pair[checkout].append(total / args.pairs)
            print(f"| {round_} | {checkout} | {total:,} | {total / args.pairs:,.0f} |", flush=True)
    means = {checkout: sum(figures) / len(figures) for checkout, figures in per_pair.items()}
    first = args.checkouts[0]
    for checkout, mean in means.items():
        print(f"{checkout}: {mean:,.0f} instructions per pair (mean), {mean / means[first]:.3f} of {first}")
    return 0


def _driver_main(argv: Sequence[str]) -> int:
    redis_url, chats, warmup, pairs = argv
    asyncio.run(_drive(redis_url, int(chats), int(warmup), int(pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
elif __name__ == DRIVER_NAME:
    sys.exit(_driver_main(sys.argv[1:]))
