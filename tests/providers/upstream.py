"""An app whose `openai` provider talks to the fake upstream, and the figures its tests assert.

The config weighs prompt tokens 1.5 and reply tokens 2.0; the system prompt "You are terse." and the
message "Tell me about foxes" are 4 tokens each by the service's estimator (8 in all, 12.0 tokens), and 7
each by the fake's count, which adds 3 per message as real chat templates do (14, 21.0 tokens).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.settings import Settings
from tests.http.conftest import Api, new_tenant
from tests.providers.conftest import READ_TIMEOUT_S
from tests.providers.fake_openai import FakeOpenAI
from tests.providers.sse import STREAM_HEADERS, Event, all_events

SYSTEM = "You are terse."
CONTENT = "Tell me about foxes"
WEIGHTS = {"prompt_weight_milli": 1500, "completion_weight_milli": 2000}
KEYS = ledger.Keyspace("cltest")
# The read timeout of tests that pause the upstream while the test acts: long enough that a slow CI
# machine never turns the pause into a timeout, and never reached when the test works.
PATIENT_S = 30.0


class Upstream:
    """An app on the test's Redis whose `openai` provider (built from the settings, as in
    production) talks to the fake; one tenant with the weights above."""

    def __init__(self, redis: Redis, tenants: ledger.TenantStore, fake: FakeOpenAI, make: Any) -> None:
        self.redis = redis
        self.tenants = tenants
        self.fake = fake
        self._make = make

    def settings(self, **overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "redis_url": "redis://unused",
            "key_prefix": "cltest",
            "auth_cache_ttl_s": 0,
            "log_format": "json",
            "provider": "openai",
            "openai_base_url": self.fake.base_url,
            "openai_api_key": "sk-test-key",
            "openai_model": "fake-model",
            "openai_read_timeout_s": READ_TIMEOUT_S,
            "openai_retry_backoff_s": 0,
        }
        return Settings(**{**fields, **overrides})

    async def api(
        self, *, settings: Settings | None = None, **config: Any
    ) -> tuple[Api, ledger.ConfigRecord]:
        record, key = await new_tenant(self.tenants, system_prompt=SYSTEM, **{**WEIGHTS, **config})
        client: TestClient[web.Request, web.Application] = await self._make(
            create_app(settings or self.settings(), redis=self.redis)
        )
        return Api(client, key), record

    async def meta(self, chat_id: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(KEYS.chat_meta(chat_id)))


async def send(api: Api, chat_id: str, *, stream: bool) -> tuple[int, Any, list[Event]]:
    """One message, as JSON or as a stream: (status, JSON body or None, events)."""
    headers = {"X-API-Key": api.api_key, **(STREAM_HEADERS if stream else {})}
    body = msgspec.json.encode({"chat_id": chat_id, "content": CONTENT})
    async with api.client.post("/chats/messages/", data=body, headers=headers) as response:
        if response.headers["Content-Type"].startswith("text/event-stream"):
            return response.status, None, await all_events(response)
        return response.status, await response.json(), []


def done_of(received: list[Event]) -> dict[str, Any]:
    assert [name for name, _ in received][-1] == "done", received
    message: dict[str, Any] = received[-1][1]
    return message


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait for a condition the service reaches on its own after the client left (bounded by the
    test timeout); the assertions that follow are on exact values."""
    # The state is in Redis, written by a server task the test cannot await: polling is the only way.
    while not await check():  # noqa: ASYNC110
        await asyncio.sleep(0.005)
