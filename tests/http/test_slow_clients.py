"""Clients that send slowly, below the API: a request head trickled a line at a time is cut with a JSON
408 at the header timeout (service/protocol.py), a silent connection is closed, a slow body or an idle
kept-alive connection is not cut, and `chatledger serve` and the shipped HAProxy bound the head too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import structlog

import ledger
from service.settings import Settings
from tests.http.served import (
    PREFIX,
    READ_BOUND_S,
    RawResponse,
    Served,
    assert_json_error,
    exchange,
    no_stdlib_errors,
    parse_response,
    request_bytes,
    seed,
    start,
)
from tests.redis_servers import free_ports
from tests.scale.conftest import ROOT, Process, base_env

HEADER_TIMEOUT_S = 0.5


@pytest_asyncio.fixture
async def slow_live(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Served]:
    """The app with a short header-read timeout and keep-alive timeout."""
    redis = ledger.embedded_redis()
    tenants = ledger.TenantStore(redis, ledger.Keyspace(PREFIX))
    api_key, _ids, _victim_ids = await seed(tenants)
    settings = Settings(
        redis_url="redis://unused", key_prefix=PREFIX, auth_cache_ttl_s=0, log_format="json",
        header_timeout_s=HEADER_TIMEOUT_S, keepalive_timeout_s=4 * HEADER_TIMEOUT_S,
    )  # fmt: skip
    runner, port = await start(settings, redis)
    try:
        with structlog.testing.capture_logs() as logs, no_stdlib_errors(caplog):
            yield Served(port, api_key, runner.app, logs)
    finally:
        await runner.cleanup()
        await redis.aclose()


async def trickle(port: int, line_every_s: float, lines_max: int = 200) -> tuple[RawResponse | None, int]:
    """Send a request line, then one header line every `line_every_s` until the server answers or
    closes; the answer and how many header lines went out. Gives up (to fail later) after `lines_max`.
    Reads as it writes: bytes read before the server's close would be lost to a read after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read_all())
    sent = 0
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        while sent < lines_max:
            await asyncio.sleep(line_every_s)
            if received or reading.done():
                break
            writer.write(b"X-Slow-%d: 1\r\n" % sent)
            try:
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
        async with asyncio.timeout(READ_BOUND_S):
            await reading
    finally:
        writer.close()
        reading.cancel()
    return parse_response(bytes(received)), sent


@pytest.mark.slow
class TestSlowClients:
    async def test_a_trickled_head_gets_408(self, slow_live: Served) -> None:
        """A client sending one header line every tenth of the timeout is cut at the timeout: a 408
        in the JSON shape, and the connection closed."""
        response, sent = await trickle(slow_live.port, HEADER_TIMEOUT_S / 10)
        error = assert_json_error(response, "trickled head")
        assert (response and response.status, error["code"]) == (408, "request_timeout")
        assert sent < 200
        await slow_live.assert_clean()

    async def test_many_slow_clients_are_all_cut_and_the_server_answers(self, slow_live: Served) -> None:
        """Fifty trickling connections all get their 408, and the server goes on answering."""
        results = await asyncio.gather(*(trickle(slow_live.port, HEADER_TIMEOUT_S / 5) for _ in range(50)))
        assert [r and r.status for r, _sent in results] == [408] * 50
        response = await exchange(
            slow_live.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert response is not None
        assert response.status == 200
        assert '"unparsed",status="408"} 50.0' in await slow_live.metrics()

    async def test_a_silent_connection_is_closed_without_an_answer(self, slow_live: Served) -> None:
        """A connection that sends nothing is closed at the timeout, with no response to a request it
        never made."""
        reader, writer = await asyncio.open_connection("127.0.0.1", slow_live.port)
        async with asyncio.timeout(READ_BOUND_S):
            assert await reader.read() == b""
        writer.close()

    async def test_a_slow_body_and_an_idle_keep_alive_are_not_cut(self, slow_live: Served) -> None:
        """The timeout is for heads only: a body sent in pieces over several timeouts is read whole,
        and a kept-alive connection idle for longer than the timeout still serves the next request."""
        body = json.dumps({"token_limit": 5}).encode()
        headers = {"Host": b"x", "X-API-Key": slow_live.api_key.encode(), "Content-Type": b"application/json"}
        reader, writer = await asyncio.open_connection("127.0.0.1", slow_live.port)
        try:
            writer.write(
                request_bytes("POST", b"/chats/", headers, framing=b"Content-Length: %d" % len(body))
            )
            for start in range(0, len(body), 4):
                await asyncio.sleep(HEADER_TIMEOUT_S / 2)
                writer.write(body[start : start + 4])
            first = await _read_one(reader)
            assert first.status == 200, first
            await asyncio.sleep(2 * HEADER_TIMEOUT_S)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            second = await _read_one(reader)
            assert second.status == 200, second
        finally:
            writer.close()
        await slow_live.assert_clean()

    async def test_a_head_pipelined_behind_a_request_is_cut_by_the_keep_alive_timeout(
        self, slow_live: Served
    ) -> None:
        """A whole request followed, in the same packet, by half a head: the first is answered, then
        the connection is closed once the keep-alive timeout passes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", slow_live.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nX-Half: ")
        first = await _read_one(reader)
        assert first.status == 200
        async with asyncio.timeout(READ_BOUND_S):
            assert await reader.read() == b""
        writer.close()


async def _read_one(reader: asyncio.StreamReader) -> RawResponse:
    """One response with a Content-Length from a kept-alive connection."""
    async with asyncio.timeout(READ_BOUND_S):
        head = await reader.readuntil(b"\r\n\r\n")
        parsed = parse_response(head)
        assert parsed is not None
        body = await reader.readexactly(int(parsed.headers["content-length"]))
    return RawResponse(parsed.status, parsed.headers, body)


class TestServeTimesOutSlowClients:
    @pytest.mark.slow
    async def test_chatledger_serve_cuts_trickling_clients(self, tmp_path: Path) -> None:
        """`chatledger serve` with CHATLEDGER_HEADER_TIMEOUT_S=1: twenty clients each sending a header
        line every 0.3 s all get a 408, and /healthz still answers."""
        (port,) = free_ports(1)
        command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
        process = Process(command, base_env(CHATLEDGER_HEADER_TIMEOUT_S="1"), tmp_path / "serve.log")
        try:
            process.log.wait_for("worker_listening", process=process.popen)
            results = await asyncio.gather(*(trickle(port, 0.3, lines_max=60) for _ in range(20)))
            assert [r and r.status for r, _sent in results] == [408] * 20
            response = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert response is not None
            assert response.status == 200
            assert len(process.log.events("request_header_timeout")) == 20
        finally:
            process.close()


class TestHaproxy:
    def test_haproxy_bounds_the_request_head(self) -> None:
        """The shipped HAProxy config gives a client a bounded time to send its request head, no
        longer than chatledger's own default."""
        config = (ROOT / "deploy" / "haproxy.cfg").read_text()
        match = re.search(r"^\s*timeout http-request (\d+)s\s*$", config, re.MULTILINE)
        assert match is not None
        assert 0 < int(match.group(1)) <= Settings().header_timeout_s
