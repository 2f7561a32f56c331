"""What a stranger can send below the API, sent through raw sockets (aiohttp's own client refuses to send
most of it) to the app served the way a worker serves it (service/workers.make_runner, which puts
service/protocol.py under the app).

Over every route the router holds (so a route added tomorrow is in the corpus the day it is added):
deeply nested JSON, bytes that are not UTF-8 in every header the app or aiohttp reads, and framings
aiohttp's parser refuses. Whatever arrives, the answer is never a 5xx, every error is the JSON error
shape, nothing is logged at error level, and /metrics counts no 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import structlog
from aiohttp import web

import ledger
from service.app import create_app
from service.openapi import doc_of
from service.settings import Settings
from service.workers import make_runner
from tests.redis_servers import free_ports
from tests.scale.conftest import ROOT, Process, base_env

PREFIX = "cledges"
ADMIN_TOKEN = "edges-admin-token-0123456"
# Ends a read that would otherwise hang on a server that never answers; not a timing assertion.
READ_BOUND_S = 15.0
# Bytes no header may carry as they are: not UTF-8 at all, a broken UTF-8 sequence, and valid UTF-8
# that latin-1 (what aiohttp writes headers in) cannot encode.
BAD_HEADER_VALUES = [b"\xff\xfe", b"k\xc3\x28y\x80", "cl\u00e9-\u20ac".encode()]
# Every request header the app or aiohttp reads, and one nobody reads.
HEADERS_READ = [
    "X-API-Key", "Authorization", "Idempotency-Key", "X-Request-ID", "Origin", "Accept", "If-None-Match",
    "Content-Type", "Host", "Access-Control-Request-Method", "Expect", "Accept-Encoding", "X-Unread",
]  # fmt: skip
# JSON nested far past the interpreter's recursion limit, about 10 KB each.
DEEP_ARRAYS = b"[" * 5000 + b"]" * 5000
DEEP_OBJECTS = b'{"a":' * 5000 + b"1" + b"}" * 5000


# --- the routes --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Any

    @property
    def auth(self) -> str | None:
        doc = doc_of(self.handler)
        return doc.auth if doc is not None else None

    @property
    def takes_json(self) -> bool:
        doc = doc_of(self.handler)
        return doc is not None and doc.body is not None

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def all_routes() -> list[Route]:
    """Every (method, path template) of the app, one of its two slash forms; HEAD is GET's handler."""
    app = create_app(Settings(redis_url="redis://unused", admin_token=ADMIN_TOKEN))
    found: dict[tuple[str, str], Route] = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        template = route.resource.canonical
        found.setdefault((route.method, template.rstrip("/")), Route(route.method, template, route.handler))
    return sorted(found.values(), key=str)


ROUTES = all_routes()


# A body each route accepts, so a bad header meets the route's whole path and not an early 422.
def _valid_bodies(ids: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("POST", "/chats"): {"token_limit": 10},
        ("POST", "/chats/messages"): {"chat_id": ids["chat_id"], "content": "hi"},
        ("PUT", "/chats/{chat_id}/tokens"): {"additional_tokens": 1},
        ("POST", "/admin/configs"): {"agent_name": "A", "company_name": "C"},
        ("PATCH", "/admin/configs/{config_id}"): {"agent_name": "B"},
        ("POST", "/widget/api/chats/{ticket}/messages"): {"content": "hi"},
    }


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


# --- the live server ---------------------------------------------------------------------------------------
@dataclass
class Live:
    port: int
    api_key: str
    app: web.Application
    ids: dict[str, str]
    victim_ids: dict[str, str]
    logs: list[MutableMapping[str, Any]] = field(default_factory=list)

    def target(self, route: Route) -> bytes:
        """The route's path with live ids; DELETE gets ids of things that may be deleted."""
        ids = self.victim_ids if route.method == "DELETE" else self.ids
        return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], route.template).encode()

    def headers(self, route: Route, body: bytes) -> dict[str, bytes]:
        headers = {
            "Host": b"127.0.0.1",
            "Connection": b"close",
            "X-API-Key": self.api_key.encode(),
            "Authorization": b"Bearer " + ADMIN_TOKEN.encode(),
        }
        if body:
            headers["Content-Type"] = b"application/json"
        return headers

    def valid_body(self, route: Route) -> bytes:
        body = _valid_bodies(self.ids).get((route.method, route.template.rstrip("/")))
        return json.dumps(body).encode() if body is not None else b""

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


async def _seed(tenants: ledger.TenantStore) -> tuple[str, dict[str, str], dict[str, str]]:
    """The API key, the ids routes take, and other ids that DELETE routes may destroy."""
    config = await tenants.create_config(agent_name="Agent", company_name="Co")
    api_key = (await tenants.issue_key(config.config_id)).api_key
    victim = await tenants.create_config(agent_name="Victim", company_name="Co")
    victim_key = await tenants.issue_key(victim.config_id)
    # `name`: a file the reference page serves (service/openapi.py's DOCS_ASSETS).
    ids = {"config_id": config.config_id, "key_id": victim_key.key_id, "name": "docs.js"}
    return api_key, ids, {"config_id": victim.config_id, "key_id": victim_key.key_id}


async def _chats(port: int, api_key: str) -> tuple[str, str, str]:
    """A chat, a chat to delete, and a widget chat's ticket, made through the API."""
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers={"X-API-Key": api_key}) as http:
        made = []
        for _ in range(2):
            async with http.post("/chats/", json={"token_limit": 10**9}) as response:
                made.append((await response.json())["chat_id"])
        async with http.post("/widget/api/chats/") as response:
            ticket: str = (await response.json())["ticket"]
    return made[0], made[1], ticket


@pytest_asyncio.fixture
async def live(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Live]:
    """The app on fakeredis (this is about HTTP, not the store) with every surface on: the admin API,
    the widget, CORS for any origin."""
    redis = ledger.embedded_redis()
    tenants = ledger.TenantStore(redis, ledger.Keyspace(PREFIX))
    api_key, ids, victim_ids = await _seed(tenants)
    settings = Settings(
        redis_url="redis://unused", key_prefix=PREFIX, auth_cache_ttl_s=0, admin_token=ADMIN_TOKEN,
        widget_api_key=api_key, widget_token_limit=10**9, cors_origins="*", log_format="json",
    )  # fmt: skip
    runner, port = await start(settings, redis)
    try:
        chat_id, victim_chat, ticket = await _chats(port, api_key)
        ids.update(chat_id=chat_id, ticket=ticket)
        victim_ids.update(chat_id=victim_chat, ticket=ticket)
        with structlog.testing.capture_logs() as logs, no_stdlib_errors(caplog):
            yield Live(port, api_key, runner.app, ids, victim_ids, logs)
    finally:
        await runner.cleanup()
        await redis.aclose()


def test_the_corpus_covers_every_route() -> None:
    """The routes come from the router: the widget, admin and operations routes are all there."""
    names = {str(route) for route in ROUTES}
    assert {"POST /chats/messages/", "POST /widget/api/chats/{ticket}/messages/",
            "PATCH /admin/configs/{config_id}", "GET /metrics"} <= names  # fmt: skip
    assert {route.template.rstrip("/") for route in ROUTES if route.takes_json} == {
        "/chats", "/chats/messages", "/chats/{chat_id}/tokens", "/admin/configs",
        "/admin/configs/{config_id}", "/widget/api/chats/{ticket}/messages",
    }  # fmt: skip


# --- the corpus --------------------------------------------------------------------------------------------
class TestDeepJson:
    @pytest.mark.parametrize("route", ROUTES, ids=str)
    async def test_deep_nesting_is_400_malformed_json(self, live: Live, route: Route) -> None:
        """10 KB of `[` (or of nested objects) is 400 malformed_json on every route that reads JSON,
        the widget proxy and the admin routes included; any other route ignores it, never a 500."""
        for body in (DEEP_ARRAYS, DEEP_OBJECTS):
            response = await exchange(
                live.port, request_bytes(route.method, live.target(route), live.headers(route, body), body)
            )
            if route.takes_json:
                error = assert_json_error(response, str(route))
                assert (response and response.status, error["code"]) == (400, "malformed_json"), error
            else:
                assert_no_server_error(response, str(route))
        await live.assert_clean()


class TestBadHeaderBytes:
    @pytest.mark.parametrize("route", ROUTES, ids=str)
    async def test_no_header_byte_is_a_500(self, live: Live, route: Route) -> None:
        """Bytes that are not UTF-8 (or not latin-1) in any header the app reads: never a 500; a bad
        X-API-Key is 401 invalid_api_key and a bad admin token 401 invalid_admin_token."""
        body = live.valid_body(route)
        for name in HEADERS_READ:
            for value in BAD_HEADER_VALUES:
                headers = live.headers(route, body)
                headers[name] = b"Bearer " + value if name == "Authorization" else value
                what = f"{route} with {name}: {value!r}"
                response = await exchange(
                    live.port, request_bytes(route.method, live.target(route), headers, body)
                )
                assert_no_server_error(response, what)
                assert response is not None, what
                if name == "X-API-Key" and route.auth == "api_key":
                    assert (response.status, response.json()["code"]) == (401, "invalid_api_key"), what
                if name == "Authorization" and route.auth == "admin":
                    assert (response.status, response.json()["code"]) == (401, "invalid_admin_token"), what
        await live.assert_clean()

    async def test_a_preflight_with_bad_bytes(self, live: Live) -> None:
        """A CORS preflight whose Origin or requested method is not UTF-8 gets no CORS answer, and no 500."""
        for value in BAD_HEADER_VALUES:
            for origin, method in ((value, b"POST"), (b"https://shop.example", value)):
                response = await exchange(live.port, request_bytes(
                    "OPTIONS", b"/chats/", {"Host": b"x", "Connection": b"close", "Origin": origin,
                                            "Access-Control-Request-Method": method},
                ))  # fmt: skip
                assert_no_server_error(response, f"preflight {origin!r} {method!r}")
                assert response is not None
                assert (
                    "access-control-allow-origin" not in response.headers or origin == b"https://shop.example"
                )
        await live.assert_clean()


def _framings(live: Live, route: Route) -> list[tuple[str, list[bytes], bool]]:
    """(name, the request in parts, whether aiohttp's parser refuses it before the app sees it)."""
    target, body = live.target(route), live.valid_body(route) or b"{}"
    headers = live.headers(route, body)

    def request(
        with_body: bytes = body,
        *,
        to: bytes = target,
        method: str = route.method,
        framing: bytes = b"",
        extra: dict[str, bytes] | None = None,
    ) -> bytes:
        return request_bytes(method, to, {**headers, **(extra or {})}, with_body, framing=framing)

    chunked = b"Transfer-Encoding: chunked"
    return [
        ("a header over 8 KB", [request(extra={"X-Big": b"a" * 9000})], True),
        ("200 headers", [request(extra={f"X-H{i}": b"v" for i in range(200)})], True),
        ("an invalid method", [request(method="G\xffT")], True),
        ("HTTP/9.9", [request().replace(b"HTTP/1.1", b"HTTP/9.9", 1)], True),
        ("a raw byte in the path", [request(to=target + b"\xff")], True),
        ("a raw byte in the query", [request(to=target + b"?limit=\xff")], True),
        ("Content-Length and Transfer-Encoding",
         [request(b"0\r\n\r\n", framing=b"Content-Length: 5\r\n" + chunked)], True),
        ("a Content-Length that is not a number", [request(framing=b"Content-Length: 1x")], True),
        ("a NUL in a header", [request(extra={"X-Nul": b"a\x00b"})], True),
        ("a bad chunk size", [request(b"zz\r\nab\r\n0\r\n\r\n", framing=chunked)], True),
        ("a bad chunk size after a good chunk",
         [request(b"1\r\n{\r\n", framing=chunked), b"zz\r\nab\r\n0\r\n\r\n"], False),
        ("a body that is not the gzip it claims",
         [request(b"not gzip", extra={"Content-Encoding": b"gzip"})], False),
    ]  # fmt: skip


class TestOddFraming:
    @pytest.mark.parametrize("route", ROUTES, ids=str)
    async def test_refused_framings_are_json_400(self, live: Live, route: Route) -> None:
        """What aiohttp's parser refuses answers 400 in the JSON shape (logged at info, by kind); a body
        that breaks after its head is 400 malformed_body on the routes that read one; never a 500."""
        for name, parts, refused in _framings(live, route):
            response = await exchange(live.port, *parts, pause_s=0.2)
            what = f"{route}: {name}"
            assert_no_server_error(response, what)
            if refused:
                error = assert_json_error(response, what)
                assert response is not None
                assert response.status == 400, what
                assert error["code"] in ("bad_http_request", "header_too_large"), (what, error)
            elif route.takes_json:
                error = assert_json_error(response, what)
                assert (response and response.status, error["code"]) == (400, "malformed_body"), (what, error)
        refusals = [e for e in live.logs if e["event"] == "bad_http_request"]
        assert {e["log_level"] for e in refusals} == {"info"}
        # The kind of refusal only: the parser's message quotes the request, which may carry a key.
        assert all(live.api_key not in json.dumps(e) for e in live.logs if e["log_level"] != "debug")
        await live.assert_clean()

    async def test_an_unknown_expect_is_json_417(self, live: Live) -> None:
        """aiohttp refuses an unknown Expect outside the middleware; the answer is still JSON."""
        headers = {**live.headers(ROUTES[0], b""), "Expect": b"banana"}
        response = await exchange(live.port, request_bytes("POST", b"/chats/", headers, b"{}"))
        error = assert_json_error(response, "Expect: banana")
        assert (response and response.status, error["code"]) == (417, "expectation_failed")
        await live.assert_clean()


class TestClientGone:
    async def test_a_client_that_closes_mid_body_is_a_499(self, live: Live) -> None:
        """A client that sends half its body and leaves is logged and counted as 499 (client closed
        request), never as unhandled_error nor as a 500 in /metrics."""
        head = request_bytes(
            "POST", b"/chats/", live.headers(ROUTES[0], b"{"), b'{"tok', framing=b"Content-Length: 100"
        )
        for _ in range(3):
            _reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
            writer.write(head)
            await writer.drain()
            writer.close()
        await until(
            lambda: len([e for e in live.logs if e["event"] == "request" and e["status"] == 499]) == 3
        )
        metrics = await live.metrics()
        assert re.search(
            r'chatledger_http_requests_total\{method="POST",route="/chats/",status="499"\} 3\.0', metrics
        )
        assert not [e for e in live.logs if e["event"] == "unhandled_error"]
        await live.assert_clean()


# --- slow clients ------------------------------------------------------------------------------------------
HEADER_TIMEOUT_S = 0.5


@pytest_asyncio.fixture
async def slow_live(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Live]:
    """The app with a short header-read timeout and keep-alive timeout."""
    redis = ledger.embedded_redis()
    tenants = ledger.TenantStore(redis, ledger.Keyspace(PREFIX))
    api_key, ids, victim_ids = await _seed(tenants)
    settings = Settings(
        redis_url="redis://unused", key_prefix=PREFIX, auth_cache_ttl_s=0, log_format="json",
        header_timeout_s=HEADER_TIMEOUT_S, keepalive_timeout_s=4 * HEADER_TIMEOUT_S,
    )  # fmt: skip
    runner, port = await start(settings, redis)
    try:
        with structlog.testing.capture_logs() as logs, no_stdlib_errors(caplog):
            yield Live(port, api_key, runner.app, ids, victim_ids, logs)
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


class TestSlowClients:
    async def test_a_trickled_head_gets_408(self, slow_live: Live) -> None:
        """A client sending one header line every tenth of the timeout is cut at the timeout: a 408
        in the JSON shape, and the connection closed."""
        response, sent = await trickle(slow_live.port, HEADER_TIMEOUT_S / 10)
        error = assert_json_error(response, "trickled head")
        assert (response and response.status, error["code"]) == (408, "request_timeout")
        assert sent < 200
        await slow_live.assert_clean()

    async def test_many_slow_clients_are_all_cut_and_the_server_answers(self, slow_live: Live) -> None:
        """Fifty trickling connections all get their 408, and the server goes on answering."""
        results = await asyncio.gather(*(trickle(slow_live.port, HEADER_TIMEOUT_S / 5) for _ in range(50)))
        assert [r and r.status for r, _sent in results] == [408] * 50
        response = await exchange(
            slow_live.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert response is not None
        assert response.status == 200
        assert '"unparsed",status="408"} 50.0' in await slow_live.metrics()

    async def test_a_silent_connection_is_closed_without_an_answer(self, slow_live: Live) -> None:
        """A connection that sends nothing is closed at the timeout, with no response to a request it
        never made."""
        reader, writer = await asyncio.open_connection("127.0.0.1", slow_live.port)
        async with asyncio.timeout(READ_BOUND_S):
            assert await reader.read() == b""
        writer.close()

    async def test_a_slow_body_and_an_idle_keep_alive_are_not_cut(self, slow_live: Live) -> None:
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
        self, slow_live: Live
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
