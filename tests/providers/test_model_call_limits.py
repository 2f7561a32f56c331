"""One pool to the model server for every config: a config past its model calls gets a fast 429.

Each config may have `model_calls_max` model calls in flight per worker (0: the service's
`model_calls_per_config`). Past it, a message is answered 429 `model_calls_exceeded` with Retry-After
before anything is reserved or sent to the model, while another config's messages go through. The
latency another config sees while one holds many slow calls is a bench figure, not an assertion here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest_asyncio
from redis.asyncio import Redis

import ledger
from tests.http.conftest import Api, new_tenant
from tests.providers.fake_openai import Behavior, FakeOpenAI
from tests.providers.sse import STREAM_HEADERS
from tests.providers.upstream import CONTENT, PATIENT_S, SYSTEM, WEIGHTS, Upstream, send


@pytest_asyncio.fixture
async def upstream(
    aiohttp_client: Any, redis_client: Redis, tenants: ledger.TenantStore, fake_openai: FakeOpenAI
) -> Upstream:
    return Upstream(redis_client, tenants, fake_openai, aiohttp_client)


async def _hanging(upstream: Upstream, api: Api, chats: list[str]) -> list[asyncio.Task[Any]]:
    """One message per chat, each held by the model until it is released; returns once all reached it."""
    upstream.fake.default = Behavior(hang=True)
    before = len(upstream.fake.requests)
    tasks = [asyncio.create_task(send(api, chat, stream=False)) for chat in chats]
    # The model server records each request as it arrives: nothing else says the calls are in flight.
    while len(upstream.fake.requests) < before + len(chats):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return tasks


async def _refused(api: Api, chat: str, *, stream: bool) -> None:
    headers = {"X-API-Key": api.api_key, **(STREAM_HEADERS if stream else {})}
    body = msgspec.json.encode({"chat_id": chat, "content": CONTENT})
    async with api.client.post("/chats/messages/", data=body, headers=headers) as response:
        assert response.status == 429
        assert response.headers["Content-Type"].startswith("application/json")
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["code"] == "model_calls_exceeded"


async def test_a_config_past_its_calls_is_refused_and_another_is_not(upstream: Upstream) -> None:
    """Config A (2 calls) holds 2 slow calls: its third message, whole or streamed, gets 429 with
    nothing reserved and no model request; config B's message is answered meanwhile; once A's calls
    end, A is served again."""
    settings = upstream.settings(openai_read_timeout_s=PATIENT_S)
    api_a, _config = await upstream.api(settings=settings, model_calls_max=2)
    _config_b, key_b = await new_tenant(upstream.tenants, system_prompt=SYSTEM, **WEIGHTS)
    api_b = Api(api_a.client, key_b)
    busy = [(await api_a.create_chat(10_000))["chat_id"] for _ in range(2)]
    spare = (await api_a.create_chat(10_000))["chat_id"]
    tasks = await _hanging(upstream, api_a, busy)
    for stream in (False, True):
        await _refused(api_a, spare, stream=stream)
    assert len(upstream.fake.requests) == 2
    assert ((await upstream.meta(spare))["reserved"], (await upstream.meta(spare))["used"]) == ("0", "0")

    upstream.fake.plan(Behavior())
    chat_b = (await api_b.create_chat(10_000))["chat_id"]
    status, body, _ = await send(api_b, chat_b, stream=False)
    assert (status, body["content"]) == (200, "The quick brown fox jumps over the lazy dog.")
    assert not any(task.done() for task in tasks)

    upstream.fake.default = Behavior()
    upstream.fake.release.set()
    assert [(await task)[0] for task in tasks] == [200, 200]
    assert (await send(api_a, spare, stream=True))[0] == 200


async def test_the_services_setting_is_the_default(upstream: Upstream) -> None:
    """A config that sets no limit has the service's `model_calls_per_config`."""
    settings = upstream.settings(openai_read_timeout_s=PATIENT_S, model_calls_per_config=1)
    api, _config = await upstream.api(settings=settings)
    busy, spare = [(await api.create_chat(10_000))["chat_id"] for _ in range(2)]
    tasks = await _hanging(upstream, api, [busy])
    await _refused(api, spare, stream=False)
    upstream.fake.default = Behavior()
    upstream.fake.release.set()
    assert (await tasks[0])[0] == 200


async def test_a_failed_call_gives_its_slot_back(upstream: Upstream) -> None:
    """Calls that fail (a 500, no retries left) end their slot like calls that succeed."""
    settings = upstream.settings(model_calls_per_config=1, openai_max_retries=0)
    api, _config = await upstream.api(settings=settings)
    chat = (await api.create_chat(10_000))["chat_id"]
    upstream.fake.plan(Behavior(status=500), Behavior(status=500))
    for stream in (False, True):
        assert (await send(api, chat, stream=stream))[0] == 502
    assert (await send(api, chat, stream=False))[0] == 200
