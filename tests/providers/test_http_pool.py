"""The `openai` provider's connection pool (service/providers/http.py) against a real aiohttp server.

Connections are kept alive and reused only when the answer before was read whole; a connection the
server closed while idle is not used again; answers in Content-Length, chunked and until-close bodies
read the same; the pool's limit makes the next caller wait, never past its deadline.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.providers.http import HttpPool, UpstreamError

BODY = b'{"hello": "world"}'
ANSWER = b"x" * 100_000
# More than the kernel's socket buffers hold on both sides of a loopback connection.
BIG = 400 * len(ANSWER)


class Server:
    """Records the client port of each request; answers ANSWER in the way `/{kind}` names."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.arrived = asyncio.Event()
        self.finished = asyncio.Event()
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/{kind}", self.handle)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert await request.read() == BODY
        self.ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        self.arrived.set()
        kind = request.match_info["kind"]
        if kind == "slow":
            await self.release.wait()
        if kind == "close":
            return web.Response(body=ANSWER, headers={"Connection": "close"})
        if kind == "big":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(BIG // len(ANSWER)):
                await response.write(ANSWER)
            await response.write_eof()
            self.finished.set()
            return response
        if kind in ("chunked", "until-close", "partial"):
            response = web.StreamResponse()
            if kind == "chunked":
                response.enable_chunked_encoding()
            else:
                response.force_close()
            await response.prepare(request)
            for start in range(0, len(ANSWER), 7_000):
                await response.write(ANSWER[start : start + 7_000])
                if kind == "partial" and len(self.ports) == 1:
                    await self.release.wait()
            await response.write_eof()
            return response
        return web.Response(body=ANSWER)


@pytest_asyncio.fixture
async def server(aiohttp_server: Any) -> AsyncIterator[Server]:
    fake = Server()
    served: TestServer = await aiohttp_server(fake.app)
    fake.url = str(served.make_url(""))
    yield fake
    fake.release.set()


def _pool(server: Server, kind: str, **kw: Any) -> HttpPool:
    return HttpPool(f"{server.url}/{kind}", {"X-Test": "1"}, connect_timeout_s=5, read_timeout_s=5, **kw)


def _deadline(seconds: float = 10) -> float:
    return asyncio.get_running_loop().time() + seconds


async def _post(pool: HttpPool, *, read: bool = True) -> bytes:
    response = await pool.post(BODY, accept=b"application/json", deadline=_deadline())
    assert response.status == 200
    body = await response.read(_deadline()) if read else b""
    response.release()
    return body


@pytest.mark.parametrize("kind", ["length", "chunked", "until-close", "close"])
async def test_every_body_framing_reads_the_same(server: Server, kind: str) -> None:
    pool = _pool(server, kind)
    try:
        assert [await _post(pool) for _ in range(3)] == [ANSWER] * 3
    finally:
        await pool.close()


async def test_an_answer_not_being_read_makes_the_server_wait(server: Server) -> None:
    """A caller that does not read: the pool stops reading too (the server's writes wait), rather
    than holding the whole answer in memory; read on, the answer is whole."""
    pool = _pool(server, "big")
    try:
        response = await pool.post(BODY, accept=b"*/*", deadline=_deadline())
        await asyncio.sleep(0.5)
        assert not server.finished.is_set()
        assert len(await response.read(_deadline())) == BIG
        response.release()
        await asyncio.wait_for(server.finished.wait(), 5)
    finally:
        await pool.close()


async def test_a_connection_is_reused_after_an_answer_read_whole(server: Server) -> None:
    pool = _pool(server, "length")
    try:
        for _ in range(5):
            await _post(pool)
        assert len(set(server.ports)) == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("kind", ["close", "until-close"])
async def test_a_connection_the_server_ends_is_not_reused(server: Server, kind: str) -> None:
    pool = _pool(server, kind)
    try:
        for _ in range(3):
            await _post(pool)
        assert len(set(server.ports)) == 3
    finally:
        await pool.close()


async def test_an_answer_left_unread_closes_its_connection(server: Server) -> None:
    """Released before its body was whole: the next request gets a new connection, and a good answer."""
    pool = _pool(server, "partial")
    try:
        await _post(pool, read=False)
        server.release.set()
        assert await _post(pool) == ANSWER
        assert len(set(server.ports)) == 2
    finally:
        await pool.close()


async def test_the_limit_makes_the_next_caller_wait_until_its_deadline(server: Server) -> None:
    pool = _pool(server, "slow", limit=1)
    try:
        first = asyncio.create_task(pool.post(BODY, accept=b"application/json", deadline=_deadline()))
        await server.arrived.wait()
        with pytest.raises(TimeoutError):
            await pool.post(BODY, accept=b"application/json", deadline=_deadline(0.2))
        server.release.set()
        (await first).release()
    finally:
        await pool.close()


async def test_a_read_stall_times_out(server: Server) -> None:
    pool = HttpPool(f"{server.url}/slow", {}, connect_timeout_s=5, read_timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            await pool.post(BODY, accept=b"application/json", deadline=_deadline())
    finally:
        await pool.close()


async def test_a_server_that_is_not_http_fails(aiohttp_raw_server: Any) -> None:
    async def garbage(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(b"SMTP ready\r\n\r\n")
        request.transport.close()
        return web.Response()

    raw: Any = await aiohttp_raw_server(garbage)
    pool = HttpPool(str(raw.make_url("/x")), {}, connect_timeout_s=5, read_timeout_s=5)
    try:
        with pytest.raises(UpstreamError):
            await pool.post(BODY, accept=b"application/json", deadline=_deadline())
    finally:
        await pool.close()


async def test_any_answer_left_unread_leaves_the_pool_working(server: Server) -> None:
    """Whether the unread answer had all arrived (kept, its buffer dropped, reading resumed) or not
    (closed), the next requests get whole answers."""
    pool = _pool(server, "chunked")
    try:
        for _ in range(3):
            await _post(pool, read=False)
            assert await _post(pool) == ANSWER
    finally:
        await pool.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, and its key (made by the openssl command)."""
    # A test that skipped where openssl is missing could never fail there: .ci/run installs it.
    assert shutil.which("openssl") is not None, "the https tests need the openssl command"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_is_verified_and_works(aiohttp_server: Any, certificate: tuple[Path, Path]) -> None:
    """A model server behind TLS (api.openai.com is): answers read the same, and a certificate the
    client does not trust is refused."""
    cert, key = certificate
    served_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served_ctx.load_cert_chain(cert, key)
    fake = Server()
    served: TestServer = await aiohttp_server(fake.app, ssl=served_ctx)
    url = f"https://localhost:{served.port}/length"
    trusting = ssl.create_default_context(cafile=cert)
    pool = HttpPool(url, {}, connect_timeout_s=5, read_timeout_s=5, ssl_context=trusting)
    try:
        assert [await _post(pool) for _ in range(2)] == [ANSWER] * 2
        assert len(set(fake.ports)) == 1
    finally:
        await pool.close()
    untrusting = HttpPool(url, {}, connect_timeout_s=5, read_timeout_s=5)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusting.post(BODY, accept=b"application/json", deadline=_deadline())
    finally:
        await untrusting.close()
