"""The app served the way a worker serves it (service/workers.make_runner, which puts service/protocol.py
under the app), and raw HTTP/1.1 to it through sockets: aiohttp's own client refuses to send most of what
tests/http/test_edges.py and test_slow_clients.py send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

import ledger
from service.app import create_app
from service.settings import Settings
from service.workers import make_runner

PREFIX = "cledges"
# Ends a read that would otherwise hang on a server that never answers; not a timing assertion.
READ_BOUND_S = 15.0


# --- raw HTTP ----------------------------------------------------------------------------------------------
@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def parse_response(raw: bytes) -> RawResponse | None:
    """The first response in `raw`, or None when the server closed without answering."""
    if not raw:
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    elif headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


async def exchange(port: int, *parts: bytes, pause_s: float = 0.0) -> RawResponse | None:
    """Send `parts` on a new connection (pausing between them), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b""
    try:
        for index, part in enumerate(parts):
            if index and pause_s:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        async with asyncio.timeout(READ_BOUND_S):
            while chunk := await reader.read(65536):
                raw += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server answered and closed while bytes were still arriving: what was read stands
    finally:
        writer.close()
    return parse_response(raw)


def request_bytes(
    method: str, target: bytes, headers: dict[str, bytes], body: bytes = b"", *, framing: bytes = b""
) -> bytes:
    """An HTTP/1.1 request; `framing` replaces the Content-Length line the body would get."""
    lines = [method.encode("latin-1") + b" " + target + b" HTTP/1.1"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    lines.append(framing or b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for what the server does in its own time; never a timing assertion."""
    for _ in range(int(READ_BOUND_S / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    pytest.fail("condition not reached")


def assert_json_error(response: RawResponse | None, what: str) -> dict[str, Any]:
    assert response is not None, f"{what}: no answer"
    assert response.headers.get("content-type", "").startswith("application/json"), (what, response)
    body: dict[str, Any] = response.json()
    for name in ("detail", "code"):
        assert isinstance(body[name], str), (what, body)
        assert body[name], (what, body)
    return body


def assert_no_server_error(response: RawResponse | None, what: str) -> None:
    """Below 500, and the JSON error shape for any error."""
    if response is None:
        return  # the connection closed unanswered: allowed for bytes that are not a request at all
    assert response.status < 500, (what, response)
    if response.status >= 400:
        assert_json_error(response, what)


# --- the served app ----------------------------------------------------------------------------------------
@dataclass
class Served:
    """A running app: its port, a tenant's API key, and chatledger's log events while the test runs."""

    port: int
    api_key: str
    app: web.Application
    logs: list[MutableMapping[str, Any]]

    async def metrics(self) -> str:
        response = await exchange(self.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert response is not None
        assert response.status == 200
        return response.body.decode()

    async def assert_clean(self) -> None:
        """Nothing at error level in chatledger's log, and no 500 counted."""
        errors = [e for e in self.logs if e.get("log_level") in ("error", "critical", "exception")]
        assert errors == [], errors
        assert 'status="500"' not in await self.metrics()


@contextlib.contextmanager
def no_stdlib_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """aiohttp logs through the standard library: nothing of it at error level either."""
    with caplog.at_level(logging.WARNING):
        yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def start(settings: Settings, redis: ledger.RedisClient) -> tuple[web.AppRunner, int]:
    """The app on the runner a worker uses, on a free port."""
    runner = make_runner(create_app(settings, redis=redis), settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


async def seed(tenants: ledger.TenantStore) -> tuple[str, dict[str, str], dict[str, str]]:
    """The API key, the ids routes take, and other ids that DELETE routes may destroy."""
    config = await tenants.create_config(agent_name="Agent", company_name="Co")
    api_key = (await tenants.issue_key(config.config_id)).api_key
    victim = await tenants.create_config(agent_name="Victim", company_name="Co")
    victim_key = await tenants.issue_key(victim.config_id)
    # `name`: a file the reference page serves (service/openapi.py's DOCS_ASSETS).
    ids = {"config_id": config.config_id, "key_id": victim_key.key_id, "name": "docs.js"}
    return api_key, ids, {"config_id": victim.config_id, "key_id": victim_key.key_id}
