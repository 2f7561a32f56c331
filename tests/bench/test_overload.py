"""The overload rows' runner and load generator work (bench/overload.py, bench/openloop.py); speed is
never judged here (docs/performance.md has the figures of a full run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import openloop

ROOT = Path(__file__).resolve().parents[2]
# Bounds a hung run only.
RUN_TIMEOUT_S = 300
ROWS = [
    "Overload, 1 worker at twice its capacity: p99 of the messages it admits, against half load |",
    "Overload: time to refuse a message past the cap",
    "Overload at the default cap",
]


class TestOpenLoop:
    @pytest.mark.parametrize("rate", [None, 300.0], ids=["closed", "open"])
    async def test_every_request_sent_is_answered_and_recorded(
        self, aiohttp_server: Any, rate: float | None
    ) -> None:
        """Against a server that refuses every other request with 503 and a body, in an open and a
        closed loop, the answers recorded are exactly the requests the server received, each with its
        status, and nothing failed."""
        received: list[int] = []

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            received.append(503 if len(received) % 2 else 200)
            return web.json_response({"n": len(received), "pad": "x" * 5000}, status=received[-1])

        app = web.Application()
        app.router.add_post("/chats/messages/", handler)
        server: TestServer = await aiohttp_server(app)
        assert server.port is not None
        request = openloop.message_request("127.0.0.1", server.port, "key", "chat", "hello")
        answers = await openloop.run(
            "127.0.0.1", server.port, [request], connections=4, seconds=0.3, rate=rate
        )
        assert answers.errors == 0
        assert sorted(answers.statuses) == sorted(received)
        assert len(answers.statuses) == len(answers.latencies_s) > 0
        assert answers.count(200) == len(answers.of(200)) == received.count(200)


@pytest.mark.redis
@pytest.mark.slow
def test_overload_smoke_run_prints_every_row() -> None:
    """`python -m bench.overload --smoke` exits 0 and prints the overload rows, each with a ratio."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.overload", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for row in ROWS:
        matching = [line for line in lines if line.startswith(f"| {row}")]
        assert len(matching) == 1, f"no single row {row!r} in:\n{done.stdout}"
        cells = [cell.strip() for cell in matching[0].strip("|").split(" | ")]
        assert len(cells) == 5
        float(cells[3])
