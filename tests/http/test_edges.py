"""What a stranger can send below the API, over every route the router holds (so a route added tomorrow is
in the corpus the day it is added), through raw sockets to the app served as a worker serves it
(tests/http/served.py): deeply nested JSON, bytes that are not UTF-8 in every header the app or aiohttp
reads, and framings aiohttp's parser refuses. Whatever arrives, the answer is never a 5xx, every error is
the JSON error shape, nothing is logged at error level, and /metrics counts no 500.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import structlog

import ledger
from service.openapi import Doc
from service.settings import Settings
from tests.http.conftest import documented_routes
from tests.http.served import (
    PREFIX,
    Served,
    assert_json_error,
    assert_no_server_error,
    exchange,
    no_stdlib_errors,
    request_bytes,
    seed,
    start,
    until,
)

# One check over every route, header and framing: thorough rather than quick (not in `make test-fast`).
pytestmark = pytest.mark.corpus

ADMIN_TOKEN = "edges-admin-token-0123456"
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
    doc: Doc

    @property
    def auth(self) -> str:
        return self.doc.auth

    @property
    def takes_json(self) -> bool:
        return self.doc.body is not None

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


ROUTES = [Route(*route) for route in documented_routes()]


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


# --- the live server ---------------------------------------------------------------------------------------
@dataclass
class Live(Served):
    """The served app with the ids its routes take, and other ids that DELETE routes may destroy."""

    ids: dict[str, str]
    victim_ids: dict[str, str]

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
    api_key, ids, victim_ids = await seed(tenants)
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
            yield Live(port, api_key, runner.app, logs, ids, victim_ids)
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
