"""The baseline server: a bare aiohttp handler doing one Redis EVALSHA per request.

It is what any aiohttp service backed by Redis pays at least per request: HTTP parsing, one script call,
a small JSON answer. It runs under the same event loop (uvloop) as chatledger's workers, and with one of
two clients: `redis-py` (the ordinary way to write it) or `pipelined` (chatledger's own script client,
ledger/multiplex.py, the fastest way this project knows). `python -m bench.baseline --port P
--redis-url URL --client redis-py`; start several on one port for several workers (SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

import ledger
from ledger.connection import multiplexer_of
from service.workers import loop_factory

# The trivial script both the baseline and redis-benchmark run.
TRIVIAL_SCRIPT = "return 1"
ANSWER = b'{"ok":true}'


def _evalsha(client: ledger.RedisClient, kind: str, sha: str) -> Callable[[], Awaitable[object]]:
    multiplexer = multiplexer_of(client)
    if kind == "pipelined":
        assert multiplexer is not None, "the pipelined baseline needs a plain TCP Redis URL"
        return lambda: multiplexer.execute("EVALSHA", sha, 0)
    return lambda: client.evalsha(sha, 0)


async def serve(port: int, redis_url: str, kind: str) -> None:
    client = ledger.connect(redis_url)
    sha = str(await client.script_load(TRIVIAL_SCRIPT))
    call = _evalsha(client, kind, sha)

    async def message(request: web.Request) -> web.Response:
        await request.read()
        await call()
        return web.Response(body=ANSWER, content_type="application/json")

    try:
        await serve_until_signalled(message, port, f"client={kind}")
    finally:
        await client.aclose()


async def serve_until_signalled(
    message: Callable[[web.Request], Awaitable[web.StreamResponse]], port: int, banner: str
) -> None:
    """`POST /chats/messages/` by `message` and a `/healthz` on `port` (SO_REUSEPORT, so several
    processes share it), from the `listening` line the runner waits for until SIGTERM or SIGINT."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/chats/messages/", message)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=1024)
    await site.start()
    print(f"listening pid={os.getpid()} {banner}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--client", choices=("redis-py", "pipelined"), default="redis-py")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(args.port, args.redis_url, args.client))
    return 0


if __name__ == "__main__":
    sys.exit(main())
