"""The app through aiohttp's test client, on the backend the root `redis_client` fixture gives."""

from __future__ import annotations

import io
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.openapi import Doc, doc_of
from service.settings import Settings

# Sentinel for "send this Api's own key": None means "send no key at all".
OWN_KEY = "\x00own-key"


class Api:
    """A test client that sends one tenant's API key and decodes JSON answers."""

    def __init__(
        self, client: TestClient[web.Request, web.Application], api_key: str, prefix: str = ""
    ) -> None:
        self.client = client
        self.api_key = api_key
        self.prefix = prefix

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        key: str | None = OWN_KEY,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        all_headers = dict(headers or {})
        api_key = self.api_key if key == OWN_KEY else key
        if api_key is not None:
            all_headers["X-API-Key"] = api_key
        body = msgspec.json.encode(json) if json is not None else data
        # A stream, not bytes: aiohttp warns (an error here) when large raw bytes are sent directly.
        stream = io.BytesIO(body) if body is not None else None
        async with self.client.request(
            method, self.prefix + path, data=stream, headers=all_headers, params=params
        ) as response:
            raw = await response.read()
            payload = msgspec.json.decode(raw) if raw else None
            return response.status, payload, dict(response.headers)

    async def create_chat(self, token_limit: float = 1000.0) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/chats/", json={"token_limit": token_limit})
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def send(self, chat_id: str, content: str = "Hello there") -> tuple[int, Any]:
        status, body, _ = await self.call(
            "POST", "/chats/messages/", json={"chat_id": chat_id, "content": content}
        )
        return status, body


AppFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def documented_routes() -> list[tuple[str, str, Doc]]:
    """(method, path template, Doc) of every route the router holds, the admin API's included, one slash
    form each, HEAD left to GET: tests that loop over it cover a route the day it is added."""
    app = create_app(Settings(redis_url="redis://unused", admin_token="router-admin-token"))
    found: dict[tuple[str, str], tuple[str, str, Doc]] = {}
    for route in app.router.routes():
        doc = doc_of(route.handler)
        assert isinstance(doc, Doc), f"{route.method} {route.resource} has no Doc"
        if route.method != "HEAD" and route.resource is not None:
            template = route.resource.canonical
            found.setdefault((route.method, template.rstrip("/")), (route.method, template, doc))
    return sorted(found.values(), key=lambda route: (route[0], route[1]))


def routed(auth: str) -> list[tuple[str, str]]:
    """(method, path template) of every route with this kind of auth: `api_key`, `admin` or `none`."""
    return [(method, template) for method, template, doc in documented_routes() if doc.auth == auth]


def fill(template: str, ids: Mapping[str, str]) -> str:
    """A path template with its variables from `ids` (a KeyError names a variable a test must give)."""
    return re.sub(r"\{(\w+)\}", lambda match: ids[match[1]], template)


@pytest.fixture
def test_settings() -> Settings:
    # A zero auth cache: tests that revoke keys or delete configs see the change at once.
    return Settings(redis_url="redis://unused", key_prefix="cltest", auth_cache_ttl_s=0, log_format="json")


@pytest.fixture
def make_client(aiohttp_client: Any, redis_client: Redis, test_settings: Settings) -> AppFactory:
    """Build a test client for an app on the test's Redis; settings fields may be overridden."""

    async def make(**overrides: Any) -> TestClient[web.Request, web.Application]:
        settings = msgspec.structs.replace(test_settings, **overrides)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(
            create_app(settings, redis=redis_client)
        )
        return client

    return make


async def new_tenant(tenants: ledger.TenantStore, **fields: Any) -> tuple[ledger.ConfigRecord, str]:
    config = await tenants.create_config(
        agent_name="Support Pro Agent", company_name="Your Company Inc.", **fields
    )
    issued = await tenants.issue_key(config.config_id)
    return config, issued.api_key


@pytest.fixture
async def api(make_client: AppFactory, tenants: ledger.TenantStore) -> Api:
    _config, api_key = await new_tenant(tenants)
    return Api(await make_client(), api_key)
