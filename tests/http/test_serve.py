"""`chatledger serve` as a newcomer runs it: a real process on the embedded default."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, process: subprocess.Popen[str], port: int, events: list[dict[str, Any]]) -> None:
        self.process, self.port, self.events = process, port, events

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events if e.get("event") == name)


@pytest.fixture
def embedded_server() -> Iterator[Server]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("CHATLEDGER_")}
    env["CHATLEDGER_LOG_FORMAT"] = "json"
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    assert process.stderr is not None
    try:
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                pytest.fail(f"chatledger serve exited with {process.wait()}")
            if line.startswith("{"):
                events.append(json.loads(line))
            if "Running on" in line:
                break
        yield Server(process, port, events)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()


@pytest.mark.slow
class TestEmbeddedServe:
    async def test_starts_announces_and_answers(self, embedded_server: Server) -> None:
        """With no REDIS_URL it announces the in-process Redis and the offline model, prints a demo
        key, and that key works for a whole exchange."""
        embedded = embedded_server.event("embedded_redis")
        assert "in-process Redis" in embedded["note"]
        assert "not an LLM" in embedded_server.event("offline_model")["note"]
        key = embedded_server.event("demo_config_created")["demo_api_key"]
        base = f"http://127.0.0.1:{embedded_server.port}"
        async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
            async with http.get(f"{base}/chat-config/") as response:
                assert response.status == 200
                assert (await response.json())["agent_name"] == "Demo Agent"
            async with http.post(f"{base}/chats/", json={"token_limit": 500}) as response:
                chat_id = (await response.json())["chat_id"]
            async with http.post(
                f"{base}/chats/messages/", json={"chat_id": chat_id, "content": "hi"}
            ) as response:
                assert response.status == 200
                assert (await response.json())["is_user"] is False
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
