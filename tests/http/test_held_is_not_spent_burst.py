"""A burst on one small chat (real redis-server): 300 concurrent sends to a budget worth 20 exchanges.
Tokens only held by messages in flight answer 429 `tokens_held` with Retry-After, never 402; the holds
are shares of the budget, so most affordable exchanges complete within the burst or its retries, and the
chat never pays more than its limit."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from ledger import Keyspace, Ledger, TenantStore
from service.app import create_app
from service.providers import Completion, CompletionRequest
from service.providers.offline import OfflineModel
from service.settings import Settings
from tests.http.conftest import Api, new_tenant

# The model's time per reply: long enough that the burst's exchanges overlap, as a real model's would.
MODEL_S = 0.2
SENDERS = 300
EXCHANGES = 20
RETRIES = 8
CONTENT = "What are your opening hours?"


class SlowModel(OfflineModel):
    """The offline model, taking MODEL_S per reply (not streamed: the burst sends JSON)."""

    async def complete(self, request: CompletionRequest) -> Completion:
        await asyncio.sleep(MODEL_S)
        return await super().complete(request)


@pytest.fixture
async def burst_api(aiohttp_client: Any, real_redis: Redis) -> tuple[Api, Ledger]:
    # The in-flight cap and the config's model calls above the burst: this test is about the chat's
    # tokens, not the worker's caps. No history in the context, so every exchange costs what the first
    # one does.
    settings = Settings(
        history_messages=0,
        redis_url="redis://unused",
        key_prefix="cltest",
        auth_cache_ttl_s=0,
        max_in_flight=1000,
        model_calls_per_config=1000,
    )
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(settings, redis=real_redis, provider=SlowModel())
    )
    _config, key = await new_tenant(TenantStore(real_redis, Keyspace("cltest")))
    return Api(client, key), Ledger(real_redis, Keyspace("cltest"))


async def _send_until_done(api: Api, chat_id: str, outcomes: list[tuple[int, Any, int]]) -> None:
    """One client: send; on a retryable answer wait its Retry-After and send again, a few times."""
    for attempt in range(RETRIES + 1):
        status, body, headers = await api.call(
            "POST", "/chats/messages/", json={"chat_id": chat_id, "content": CONTENT}
        )
        outcomes.append((status, body, attempt))
        if status not in (429, 503):
            return
        await asyncio.sleep(int(headers["Retry-After"]))


@pytest.mark.redis
@pytest.mark.slow
async def test_a_burst_on_a_chat_worth_twenty_exchanges(burst_api: tuple[Api, Ledger]) -> None:
    api, book = burst_api
    # What one exchange costs, measured on a chat with room to spare (the offline model is deterministic).
    probe = (await api.create_chat(10_000))["chat_id"]
    status, _ = await api.send(probe, CONTENT)
    assert status == 200
    cost = (await api.call("GET", f"/chats/{probe}"))[1]["token_used"]
    assert cost > 0

    chat_id = (await api.create_chat(EXCHANGES * cost))["chat_id"]
    outcomes: list[tuple[int, Any, int]] = []
    await asyncio.gather(*(_send_until_done(api, chat_id, outcomes) for _ in range(SENDERS)))

    statuses = Counter(status for status, _, _ in outcomes)
    assert set(statuses) <= {200, 402, 429}, statuses
    # No 402 while the chat could still pay: each says what was left with nothing held, and it was short.
    for status, body, _ in outcomes:
        if status == 402:
            assert body["token_limit"] - body["token_used"] < body["tokens_needed"], body
        elif status == 429:
            assert body["code"] == "tokens_held", body
            assert body["token_limit"] - body["token_used"] >= body["tokens_needed"], body
    assert statuses[200] >= EXCHANGES - 2, statuses
    # Not one after the other: the holds are shares, so most exchanges ran in the burst itself.
    assert sum(1 for status, _, attempt in outcomes if status == 200 and attempt == 0) >= EXCHANGES // 2

    # 0 overspend, every hold resolved, and the journal agrees with the counters.
    result = await book.reconcile(chat_id)
    assert result.chat.used_milli <= result.chat.limit_milli
    assert result.chat.reserved_milli == 0
    assert result.ok
    items: list[dict[str, Any]] = []
    while len(items) < 2 * statuses[200]:
        page = (
            await api.call(
                "GET", f"/chats/{chat_id}/messages/", params={"limit": "100", "offset": str(len(items))}
            )
        )[1]
        assert page["items"], page
        items += page["items"]
    assert page["total"] == len(items) == 2 * statuses[200]
    charged_milli = sum(round(m["tokens_charged"] * 1000) for m in items if not m["is_user"])
    assert charged_milli == result.chat.used_milli
