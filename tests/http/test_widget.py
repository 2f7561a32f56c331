"""The chat widget's server side through aiohttp's test client: its files, its proxy routes,
and what keeps the API key on the server. The browser itself is tested in tests/browser/.

These run on fakeredis only: the widget adds no Redis work of its own (every route is an API path
through the ledger, which tests/integration runs on every backend).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

import ledger
from ledger.tenants import key_digest
from service.app import create_app
from service.settings import Settings
from service.widget import Widget, widget_from_settings
from tests.providers.sse import STREAM_HEADERS, all_events, reply_of

PREFIX = "clwidget"
Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]


class Tenant(msgspec.Struct, frozen=True):
    tenants: ledger.TenantStore
    config: ledger.ConfigRecord
    api_key: str


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[Redis]:
    client = ledger.embedded_redis()
    await client.flushall()
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def tenant(fake: Redis) -> Tenant:
    tenants = ledger.TenantStore(fake, ledger.Keyspace(PREFIX))
    config = await tenants.create_config(
        agent_name="Widget Agent", company_name="Widget Co", primary_color="#0B8043",
        welcome_message="Hi!", start_page_title="Ask us", is_full_width=True,
    )  # fmt: skip
    issued = await tenants.issue_key(config.config_id)
    return Tenant(tenants=tenants, config=config, api_key=issued.api_key)


@pytest.fixture
def make_widget_client(aiohttp_client: Any, fake: Redis, tenant: Tenant) -> ClientFactory:
    """A test client of an app whose widget holds the tenant's key; settings may be overridden."""

    async def make(**overrides: Any) -> Client:
        fields: dict[str, Any] = {
            "redis_url": "redis://unused", "key_prefix": PREFIX, "auth_cache_ttl_s": 0,
            "log_format": "json", "widget_api_key": tenant.api_key, "widget_token_limit": 250.0,
        }  # fmt: skip
        settings = Settings(**(fields | overrides))
        client: Client = await aiohttp_client(create_app(settings, redis=fake))
        return client

    return make


async def call(
    client: Client, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with client.request(method, path, json=json, headers=headers) as response:
        raw = await response.read()
        return response.status, (msgspec.json.decode(raw) if raw else None)


async def new_chat(client: Client) -> dict[str, Any]:
    status, chat = await call(client, "POST", "/widget/api/chats/")
    assert status == 200, chat
    assert isinstance(chat, dict)
    return chat


class TestFiles:
    def test_the_files_are_package_data(self) -> None:
        """widget.js and the demo page are reachable through importlib.resources, as in a wheel."""
        for name in ("widget.js", "demo.html"):
            assert files("service").joinpath(f"widget/{name}").is_file()

    def test_the_script_never_parses_markup(self) -> None:
        """The widget writes text only: no HTML parsing sinks and no eval anywhere in widget.js."""
        source = files("service").joinpath("widget/widget.js").read_text(encoding="utf-8")
        sinks = r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc"
        assert re.findall(sinks, source) == []
        assert "textContent" in source

    async def test_the_script_is_served_even_when_the_widget_is_off(
        self, make_widget_client: ClientFactory
    ) -> None:
        """It holds nothing secret, so an operator's own proxy can load it from here; an ETag makes
        a reload a 304."""
        client = await make_widget_client(widget_api_key=None)
        async with client.get("/widget/widget.js") as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            etag = response.headers["ETag"]
        async with client.get("/widget/widget.js", headers={"If-None-Match": etag}) as response:
            assert response.status == 304

    async def test_the_demo_page_loads_the_script_under_the_base_path(
        self, make_widget_client: ClientFactory
    ) -> None:
        """Under a base path the demo page's one script tag names the mounted script, and the page
        runs no script from anywhere else (its Content-Security-Policy)."""
        client = await make_widget_client(base_path="/svc")
        async with client.get("/svc/widget/") as response:
            assert response.status == 200
            page = await response.text()
            csp = response.headers["Content-Security-Policy"]
        assert re.findall(r"<script[^>]*>", page) == [
            '<script src="/svc/widget/widget.js" data-target="#chat" defer>'
        ]
        assert "script-src 'self';" in csp


class TestSwitch:
    async def test_without_a_key_the_widget_is_off(self, make_widget_client: ClientFactory) -> None:
        """With no CHATLEDGER_WIDGET_API_KEY (and not the embedded default), the page and the proxy
        answer 404 in the usual error shape."""
        client = await make_widget_client(widget_api_key=None)
        for method, path in (
            ("GET", "/widget/"),
            ("GET", "/widget/api/config"),
            ("POST", "/widget/api/chats/"),
        ):
            status, body = await call(client, method, path)
            assert (status, body["code"]) == (404, "not_found"), path

    def test_the_embedded_default_uses_the_demo_key(self) -> None:
        """The embedded default turns the widget on with the demo key; a real Redis needs the setting."""
        embedded = widget_from_settings(Settings(widget_token_limit=5), "demo-key")
        assert embedded is not None
        assert (embedded.api_key, embedded.token_limit_milli) == ("demo-key", 5000)
        assert widget_from_settings(Settings(redis_url="redis://x"), "demo-key") is None
        chosen = widget_from_settings(Settings(redis_url="redis://x", widget_api_key="k"), None)
        assert chosen is not None
        assert chosen.api_key == "k"

    async def test_an_unusable_key_is_a_503_not_a_401(
        self, make_widget_client: ClientFactory, tenant: Tenant
    ) -> None:
        """A revoked widget key is the operator's to fix: visitors get 503, never a 401 to act on."""
        client = await make_widget_client()
        assert await tenant.tenants.revoke_key_value(tenant.api_key)
        status, body = await call(client, "GET", "/widget/api/config")
        assert (status, body["code"]) == (503, "widget_unavailable")


class TestProxy:
    async def test_config_is_the_branding_and_the_widget_limits(
        self, make_widget_client: ClientFactory, tenant: Tenant
    ) -> None:
        """The config's branding fields, without its id, plus each new chat's budget."""
        client = await make_widget_client()
        status, config = await call(client, "GET", "/widget/api/config")
        assert status == 200
        assert config["primary_color"] == "#0B8043"
        assert config["is_full_width"] is True
        assert (config["start_page_title"], config["welcome_message"]) == ("Ask us", "Hi!")
        assert (config["token_limit"], config["max_content_chars"]) == (250.0, 16_000)
        assert "config_id" not in config

    async def test_a_widget_chat_is_a_chat_of_the_keys_config(
        self, make_widget_client: ClientFactory, tenant: Tenant
    ) -> None:
        """The widget creates an ordinary chat with its budget: the key's owner sees it in the API."""
        client = await make_widget_client()
        chat = await new_chat(client)
        assert (chat["token_limit"], chat["token_used"]) == (250.0, 0.0)
        assert chat["ticket"].startswith(chat["chat_id"] + ".")
        status, seen = await call(
            client, "GET", f"/chats/{chat['chat_id']}", headers={"X-API-Key": tenant.api_key}
        )
        assert (status, seen["token_limit"]) == (200, 250.0)
        status, again = await call(client, "GET", f"/widget/api/chats/{chat['ticket']}")
        assert (status, again) == (200, chat)

    async def test_a_message_streams_and_is_charged_like_the_api(
        self, make_widget_client: ClientFactory, tenant: Tenant
    ) -> None:
        """A send streams the API's events (deltas, then done with the balance); the history and
        the balance are the ledger's, as the API reads them."""
        client = await make_widget_client()
        chat = await new_chat(client)
        path = f"/widget/api/chats/{chat['ticket']}/messages/"
        async with client.post(path, json={"content": "Hello widget"}, headers=STREAM_HEADERS) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            received = await all_events(response)
        names = [name for name, _ in received]
        assert names[-1] == "done"
        assert names.count("delta") > 1
        done = received[-1][1]
        assert reply_of(received) == done["message"]["content"]
        status, page = await call(client, "GET", path)
        assert status == 200
        assert [m["is_user"] for m in page["items"]] == [True, False]
        assert page["items"][0]["content"] == "Hello widget"
        status, api_chat = await call(
            client, "GET", f"/chats/{chat['chat_id']}", headers={"X-API-Key": tenant.api_key}
        )
        assert api_chat["token_used"] == done["token_used"] == done["tokens_charged"] > 0

    async def test_a_retry_replays_through_either_route(
        self, make_widget_client: ClientFactory, tenant: Tenant
    ) -> None:
        """A message sent through the API and retried through the widget with the same Idempotency-Key
        gets the saved message as JSON: one exchange, charged once."""
        client = await make_widget_client()
        chat = await new_chat(client)
        widget_path = f"/widget/api/chats/{chat['ticket']}/messages/"
        api_headers = {"X-API-Key": tenant.api_key, "Idempotency-Key": "once"}
        body = {"chat_id": chat["chat_id"], "content": "Charge me once"}
        status, sent = await call(client, "POST", "/chats/messages/", json=body, headers=api_headers)
        assert status == 200
        async with client.post(
            widget_path,
            json={"content": "Charge me once"},
            headers={"Idempotency-Key": "once", **STREAM_HEADERS},
        ) as response:
            assert (response.status, response.content_type) == (200, "application/json")
            assert await response.json() == sent
        status, page = await call(client, "GET", widget_path)
        assert (status, page["total"]) == (200, 2)
        status, seen = await call(client, "GET", f"/widget/api/chats/{chat['ticket']}")
        assert seen["token_used"] == sent["tokens_charged"] > 0

    async def test_out_of_tokens_is_the_api_402(self, make_widget_client: ClientFactory) -> None:
        """A chat that cannot pay answers the API's 402 JSON, with the figures the widget shows."""
        client = await make_widget_client(widget_token_limit=3.0)
        chat = await new_chat(client)
        status, body = await call(
            client,
            "POST",
            f"/widget/api/chats/{chat['ticket']}/messages/",
            json={"content": "a message of a few more tokens than three"},
        )
        assert (status, body["code"]) == (402, "insufficient_tokens")
        assert body["tokens_available"] == 3.0
        assert body["tokens_needed"] > 3.0

    async def test_invalid_content_is_the_api_422(self, make_widget_client: ClientFactory) -> None:
        client = await make_widget_client()
        chat = await new_chat(client)
        status, body = await call(
            client, "POST", f"/widget/api/chats/{chat['ticket']}/messages/", json={"content": " "}
        )
        assert (status, body["code"]) == (422, "invalid_content")

    async def test_only_this_widgets_tickets_open_chats(
        self, make_widget_client: ClientFactory, tenant: Tenant
    ) -> None:
        """A chat id alone, a chat the API created, another key's ticket or a bent MAC: all 404, the
        same answer as a chat that does not exist."""
        client = await make_widget_client()
        widget_chat = await new_chat(client)
        status, api_chat = await call(
            client, "POST", "/chats/", json={"token_limit": 100}, headers={"X-API-Key": tenant.api_key}
        )
        assert status == 200
        other_key = Widget("another key", 1000)
        bent = widget_chat["ticket"][:-2] + ("AA" if not widget_chat["ticket"].endswith("AA") else "BB")
        refused = [
            widget_chat["chat_id"], api_chat["chat_id"], other_key.ticket(api_chat["chat_id"]),
            other_key.ticket(widget_chat["chat_id"]), bent, "not-a-ticket",
        ]  # fmt: skip
        for ticket in refused:
            for method, suffix, body in (("GET", "", None), ("GET", "/messages/", None),
                                         ("POST", "/messages/", {"content": "hi"})):  # fmt: skip
                status, answer = await call(client, method, f"/widget/api/chats/{ticket}{suffix}", json=body)
                assert (status, answer["code"]) == (404, "chat_not_found"), (ticket, method, suffix)

    async def test_a_deleted_chat_is_gone(self, make_widget_client: ClientFactory, tenant: Tenant) -> None:
        client = await make_widget_client()
        chat = await new_chat(client)
        status, _ = await call(
            client, "DELETE", f"/chats/{chat['chat_id']}", headers={"X-API-Key": tenant.api_key}
        )
        assert status == 200
        status, body = await call(client, "GET", f"/widget/api/chats/{chat['ticket']}")
        assert (status, body["code"]) == (404, "chat_deleted")

    async def test_no_answer_carries_the_key(self, make_widget_client: ClientFactory, tenant: Tenant) -> None:
        """Nothing the widget routes answer (bodies or headers) holds the key or its digest."""
        client = await make_widget_client()
        secrets = (tenant.api_key, key_digest(tenant.api_key))
        seen: list[str] = []
        chat = await new_chat(client)
        requests: list[tuple[str, str, Any]] = [
            ("GET", "/widget/", None), ("GET", "/widget/widget.js", None),
            ("GET", "/widget/api/config", None),
            ("GET", f"/widget/api/chats/{chat['ticket']}", None),
            ("POST", f"/widget/api/chats/{chat['ticket']}/messages/", {"content": "hello"}),
            ("GET", f"/widget/api/chats/{chat['ticket']}/messages/", None),
        ]  # fmt: skip
        for method, path, body in requests:
            async with client.request(method, path, json=body, headers=STREAM_HEADERS) as response:
                assert response.status == 200, path
                seen.append(await response.text() + repr(dict(response.headers)))
        assert not [s for s in secrets for text in seen if s in text]
