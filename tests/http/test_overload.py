"""The in-flight cap through the app (service/admission.py): a request past it is answered 503
`overloaded` with Retry-After before anything runs, a stream holds its slot until it ends, health,
metrics and CORS preflights are never refused, /readyz reports saturation, and the OpenAPI document
lists the 503 on every route that can answer it. (On a real `serve` process: tests/process.)

The backend does not matter to a refusal, which happens before any Redis call: the embedded one is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient

import ledger
from ledger import RedisClient
from service.admission import RETRY_AFTER_S
from service.app import create_app
from service.providers import Completion, CompletionRequest, ProviderError, StreamEnd
from service.providers.offline import OfflineModel
from service.settings import Settings
from tests.http.conftest import Api, new_tenant

PREFIX = "clshed"
KEYS = ledger.Keyspace(PREFIX)
SSE = {"Accept": "text/event-stream"}


class HeldStream(OfflineModel):
    """The offline model, whose streams stop after their first delta until the test releases them, and
    whose next whole reply fails when the test asks."""

    def __init__(self) -> None:
        super().__init__()
        self.streaming = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_next = False

    async def complete(self, request: CompletionRequest) -> Completion:
        if self.fail_next:
            self.fail_next = False
            raise ProviderError("The model answered HTTP 500.")
        return await super().complete(request)

    async def _deltas(self, request: CompletionRequest) -> AsyncGenerator[str | StreamEnd, None]:
        first = True
        async for event in super()._deltas(request):
            yield event
            if first:
                first = False
                self.streaming.set()
                await self.release.wait()


class Capped:
    """An app with a small cap, its model, a tenant's client, and a stream that holds one slot."""

    def __init__(self, client: TestClient[web.Request, web.Application], model: HeldStream, key: str) -> None:
        self.client, self.model, self.api = client, model, Api(client, key)
        self.holding: asyncio.Task[str] | None = None

    async def hold_a_slot(self, chat_id: str) -> None:
        """Open a stream and return once its first delta arrived: it is in flight until released."""

        async def stream() -> str:
            body = {"chat_id": chat_id, "content": "hold on"}
            headers = {**SSE, "X-API-Key": self.api.api_key}
            path = self.api.prefix + "/chats/messages/"
            async with self.client.post(path, json=body, headers=headers) as response:
                assert response.status == 200
                return await response.text()

        self.holding = asyncio.create_task(stream())
        await self.model.streaming.wait()

    async def end_the_stream(self) -> str:
        assert self.holding is not None
        self.model.release.set()
        return await self.holding

    async def send(self, chat_id: str) -> tuple[int, Any, dict[str, str]]:
        return await self.api.call("POST", "/chats/messages/", json={"chat_id": chat_id, "content": "hi"})


@pytest_asyncio.fixture
async def store() -> AsyncIterator[RedisClient]:
    client = ledger.embedded_redis()
    yield client
    await client.aclose()


@pytest.fixture
def make_capped(aiohttp_client: Any, store: RedisClient) -> Any:
    async def make(cap: int = 1, **overrides: Any) -> Capped:
        settings = Settings(
            redis_url="redis://unused", key_prefix=PREFIX, auth_cache_ttl_s=0, log_format="json",
            max_in_flight=cap, **overrides,
        )  # fmt: skip
        model = HeldStream()
        client = await aiohttp_client(create_app(settings, redis=store, provider=model))
        _config, key = await new_tenant(ledger.TenantStore(store, KEYS))
        return Capped(client, model, key)

    return make


async def figures(store: RedisClient, chat_id: str) -> tuple[int, int, list[str]]:
    """The chat's used and reserved milli-tokens, and its journal's operations."""
    book = ledger.Ledger(store, KEYS)
    chat = await book.get_chat(None, chat_id)
    return chat.used_milli, chat.reserved_milli, [entry.op for entry in await book.read_journal(chat_id)]


class TestPastTheCap:
    async def test_a_request_past_the_cap_is_refused_and_reserves_nothing(
        self, make_capped: Any, store: RedisClient
    ) -> None:
        """With a stream holding the only slot, a message to another chat answers 503 overloaded with
        Retry-After and X-Request-ID, and that chat's figures and journal are untouched."""
        capped = await make_capped(cap=1)
        held, other = (await capped.api.create_chat())["chat_id"], (await capped.api.create_chat())["chat_id"]
        await capped.hold_a_slot(held)
        status, body, headers = await capped.send(other)
        assert (status, body["code"]) == (503, "overloaded"), body
        assert "(1)" in body["detail"]
        assert headers["Retry-After"] == str(RETRY_AFTER_S)
        assert headers["X-Request-ID"]
        assert await figures(store, other) == (0, 0, ["create"])
        await capped.end_the_stream()

    async def test_a_stream_holds_its_slot_until_it_ends(self, make_capped: Any, store: RedisClient) -> None:
        """A streamed reply counts as in flight until its last event: refused while it streams, the
        same message is served once the stream ended, and only the two exchanges are charged."""
        capped = await make_capped(cap=1)
        chat = (await capped.api.create_chat())["chat_id"]
        await capped.hold_a_slot(chat)
        assert (await capped.send(chat))[0] == 503
        events = await capped.end_the_stream()
        assert "event: done" in events
        status, body, _headers = await capped.send(chat)
        assert status == 200, body
        used, reserved, ops = await figures(store, chat)
        assert (reserved, ops) == (0, ["create", "reserve", "settle", "reserve", "settle"])
        assert used > 0

    async def test_a_failed_request_gives_its_slot_back(self, make_capped: Any) -> None:
        """A request that fails (the model errs: 502) releases its slot like one that succeeds: with a
        cap of 1, the next message is served."""
        capped = await make_capped(cap=1)
        chat = (await capped.api.create_chat())["chat_id"]
        capped.model.fail_next = True
        assert (await capped.send(chat))[0] == 502
        assert (await capped.send(chat))[0] == 200
        status, body, _headers = await capped.api.call("GET", "/readyz")
        assert (status, body["in_flight"]) == (200, 0)

    async def test_below_the_cap_nothing_is_refused(self, make_capped: Any) -> None:
        """With two slots and one stream holding one, a message is served."""
        capped = await make_capped(cap=2)
        chat = (await capped.api.create_chat())["chat_id"]
        await capped.hold_a_slot(chat)
        assert (await capped.send(chat))[0] == 200
        await capped.end_the_stream()

    async def test_unrouted_and_reference_requests_are_refused_too(self, make_capped: Any) -> None:
        """Any route but health and metrics is refused at the cap: the API reference, an unknown path."""
        capped = await make_capped(cap=1)
        await capped.hold_a_slot((await capped.api.create_chat())["chat_id"])
        for path in ("/openapi.json", "/no/such/path", "/chat-config/"):
            status, body, _headers = await capped.api.call("GET", path)
            assert (status, body["code"]) == (503, "overloaded"), path
        await capped.end_the_stream()


class TestNeverRefused:
    @pytest.mark.parametrize("base_path", ["", "/api/v1"])
    async def test_health_metrics_and_preflight_answer_at_the_cap(
        self, make_capped: Any, base_path: str
    ) -> None:
        """At the cap, /healthz answers 200, /metrics 200 and a CORS preflight 204, under any base path,
        while a message is refused; /readyz answers 503 `saturated` with the load."""
        capped = await make_capped(cap=1, base_path=base_path, cors_origins="https://shop.example")
        capped.api.prefix = base_path
        await capped.hold_a_slot((await capped.api.create_chat())["chat_id"])
        assert (await capped.api.call("GET", "/healthz"))[0] == 200
        assert (await _text(capped, f"{base_path}/metrics"))[0] == 200
        preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
        assert (await capped.api.call("OPTIONS", "/chats/messages/", headers=preflight))[0] == 204
        status, body, headers = await capped.api.call(
            "GET", "/chat-config/", headers={"Origin": "https://shop.example"}
        )
        assert (status, body["code"]) == (503, "overloaded")
        # A browser can read the refusal and when to retry.
        assert headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert "Retry-After" in headers["Access-Control-Expose-Headers"]
        status, body, _headers = await capped.api.call("GET", "/readyz")
        assert status == 503
        assert body == {
            "status": "saturated",
            "in_flight": 1,
            "max_in_flight": 1,
            "detail": "The worker is at its in-flight cap (1) or refused a request within the last 1 s; "
            "new requests get 503 overloaded.",
        }
        await capped.end_the_stream()


class TestReadiness:
    async def test_ready_below_the_cap_reports_the_load(self, make_capped: Any) -> None:
        """Below the cap, /readyz answers 200 with Redis's state, the requests in flight (itself not
        counted) and the cap."""
        capped = await make_capped(cap=2)
        await capped.hold_a_slot((await capped.api.create_chat())["chat_id"])
        status, body, _headers = await capped.api.call("GET", "/readyz")
        assert (status, body) == (200, {"status": "ready", "redis": True, "in_flight": 1, "max_in_flight": 2})
        await capped.end_the_stream()

    async def test_readiness_returns_once_the_load_drops(self, make_capped: Any) -> None:
        """After a refusal, /readyz stays 503 while the slot is held, and answers 200 again once the
        stream ended and the refusal is past (SATURATED_FOR_S); then messages are served."""
        capped = await make_capped(cap=1)
        chat = (await capped.api.create_chat())["chat_id"]
        await capped.hold_a_slot(chat)
        assert (await capped.send(chat))[0] == 503
        assert (await capped.api.call("GET", "/readyz"))[0] == 503
        await capped.end_the_stream()
        await _until_ready(capped.api)
        assert (await capped.send(chat))[0] == 200


class TestCountedApart:
    async def test_refusals_have_their_own_counter_and_one_log_line(self, make_capped: Any) -> None:
        """Three refusals add 3 to chatledger_http_requests_shed_total for their route and nothing to
        the 503s of chatledger_http_requests_total (the service's faults); they are logged as one
        `requests_shed` line, not one `request` line each."""
        capped = await make_capped(cap=1)
        chat = (await capped.api.create_chat())["chat_id"]
        await capped.hold_a_slot(chat)
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                assert (await capped.send(chat))[0] == 503
        await capped.end_the_stream()
        shed_lines = [entry for entry in logs if entry["event"] == "requests_shed"]
        assert [(e["shed"], e["max_in_flight"], e["log_level"]) for e in shed_lines] == [(1, 1, "warning")]
        assert not [entry for entry in logs if entry["event"] == "request"]
        status, text, _headers = await _text(capped, "/metrics")
        assert status == 200
        assert 'chatledger_http_requests_shed_total{route="/chats/messages/"} 3.0' in text
        assert 'status="503"' not in text


class TestDocument:
    async def test_every_route_but_health_and_metrics_lists_the_refusal(self, make_capped: Any) -> None:
        """/openapi.json lists 503 (with Retry-After) on every operation but /healthz and /metrics, and
        /readyz's 503 is its own Health body."""
        capped = await make_capped(cap=10)
        status, document, _headers = await capped.api.call("GET", "/openapi.json")
        assert status == 200
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                responses = operation["responses"]
                if path.rstrip("/") in ("/healthz", "/metrics"):
                    assert "503" not in responses, path
                    continue
                assert "503" in responses, (method, path)
                assert "Retry-After" in responses["503"]["headers"] or path == "/readyz"
        readyz = document["paths"]["/readyz"]["get"]["responses"]["503"]
        assert readyz["content"]["application/json"]["schema"]["$ref"].endswith("/Health")


async def _until_ready(api: Api) -> None:
    """Poll /readyz until it answers 200 (bounded: the wait only ends a test that fails)."""
    for _ in range(200):
        if (await api.call("GET", "/readyz"))[0] == 200:
            return
        await asyncio.sleep(0.05)
    pytest.fail("/readyz did not answer 200 again")


async def _text(capped: Capped, path: str) -> tuple[int, str, dict[str, str]]:
    async with capped.client.get(path) as response:
        return response.status, await response.text(), dict(response.headers)
