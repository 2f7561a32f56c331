"""Rate limits, metrics, CORS, and how fast a revocation reaches every worker."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.settings import Settings
from tests.http.conftest import Api, AppFactory, new_tenant


class TestRateLimit:
    async def test_429_with_retry_after_past_the_burst(
        self, make_client: AppFactory, tenants: ledger.TenantStore
    ) -> None:
        """A key of a config limited to 1/s with a burst of 3 gets 3 answers, then 429 with Retry-After."""
        _config, key = await new_tenant(tenants, rate_limit_per_s=1.0, rate_limit_burst=3)
        api = Api(await make_client(), key)
        answers = [await api.call("GET", "/chat-config/") for _ in range(4)]
        assert [status for status, _, _ in answers] == [200, 200, 200, 429]
        _, body, headers = answers[3]
        assert body["code"] == "rate_limited"
        assert headers["Retry-After"] == "1"

    async def test_unlimited_configs_are_not_metered(self, api: Api) -> None:
        """A config without a limit never answers 429."""
        statuses = {(await api.call("GET", "/chat-config/"))[0] for _ in range(30)}
        assert statuses == {200}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        matches = line.split(" ")[0].split("{")[0] == name
        if matches and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class TestMetrics:
    async def test_values_move_with_requests(self, api: Api) -> None:
        """Requests, tokens charged, 402s and script latencies show up in /metrics."""

        async def scrape() -> str:
            async with api.client.get("/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                return await response.text()

        before = await scrape()
        chat = (await api.create_chat(100))["chat_id"]
        _, reply = await api.send(chat, "count me")
        await api.send((await api.create_chat(1))["chat_id"], "too poor")
        after = await scrape()
        route = "/chats/messages/"
        assert sample(after, "chatledger_http_requests_total", route=route, status="200") == 1 + sample(
            before, "chatledger_http_requests_total", route=route, status="200"
        )
        assert sample(after, "chatledger_http_requests_total", route=route, status="402") >= 1
        assert sample(after, "chatledger_redis_script_duration_seconds_count", script="reserve") >= 2
        assert sample(after, "chatledger_http_request_duration_seconds_count", route=route) >= 2
        assert re.search(r"^chatledger_tokens_charged_total ", after, re.M)
        assert (
            sample(after, "chatledger_tokens_charged_total")
            - sample(before, "chatledger_tokens_charged_total")
            == reply["tokens_charged"]
        )
        assert sample(after, "chatledger_insufficient_tokens_total") >= 1

    async def test_each_model_call_is_timed_once_streamed_or_not(self, api: Api) -> None:
        """The model-call histogram counts calls: one a message, whether the reply came whole or as a
        stream (opened, then relayed)."""

        async def calls() -> float:
            async with api.client.get("/metrics") as response:
                text = await response.text()
            return sample(text, "chatledger_upstream_duration_seconds_count", provider="offline")

        chat = (await api.create_chat(1000))["chat_id"]
        before = await calls()
        assert (await api.send(chat, "whole"))[0] == 200
        body = msgspec.json.encode({"chat_id": chat, "content": "streamed", "stream": True})
        async with api.client.post(
            "/chats/messages/", data=body, headers={"X-API-Key": api.api_key}
        ) as response:
            assert "event: done" in await response.text()
        assert await calls() == before + 2


class TestCors:
    async def test_preflight_and_headers_for_allowed_origins_only(
        self, make_client: AppFactory, tenants: ledger.TenantStore
    ) -> None:
        """An allowed origin gets a 204 preflight and Access-Control headers; others get none."""
        _config, key = await new_tenant(tenants)
        client = await make_client(cors_origins="https://shop.example, https://app.example")
        preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "x-api-key, content-type"}  # fmt: skip
        async with client.options("/chats/messages/", headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            assert "X-API-Key" in response.headers["Access-Control-Allow-Headers"]
        headers = {"Origin": "https://app.example", "X-API-Key": key}
        async with client.get("/chat-config/", headers=headers) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
        async with client.get(
            "/chat-config/", headers={**headers, "Origin": "https://evil.example"}
        ) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        async with client.options(
            "/chats/messages/", headers={**preflight, "Origin": "https://evil.example"}
        ) as r:
            assert r.status == 405


@pytest.mark.redis
@pytest.mark.slow
class TestRevocationBound:
    async def test_a_revoked_key_stops_on_another_worker_within_the_cache_ttl(
        self, aiohttp_client: Any, real_redis: Redis, redis_server: Any
    ) -> None:
        """Worker B keeps trusting its cached key only until the auth cache TTL runs out (the stated
        bound on revocation delay), then answers 401: measured, with a 1 s TTL."""
        ttl_s = 1.0
        settings = Settings(redis_url="redis://unused", key_prefix="cltest", auth_cache_ttl_s=ttl_s)
        tenants = ledger.TenantStore(real_redis, ledger.Keyspace("cltest"))
        _config, key = await new_tenant(tenants)
        other = ledger.connect(redis_server.url)
        try:
            worker_b = Api(await aiohttp_client(create_app(settings, redis=other)), key)
            assert (await worker_b.call("GET", "/chat-config/"))[0] == 200  # B caches the key
            assert await tenants.revoke_key_value(key)
            revoked_at = time.monotonic()
            assert (await worker_b.call("GET", "/chat-config/"))[0] == 200  # still cached: the delay is real
            while (await worker_b.call("GET", "/chat-config/"))[0] == 200:
                assert time.monotonic() - revoked_at < ttl_s + 0.5, "revocation outlived the cache TTL"
                await asyncio.sleep(0.05)
            assert time.monotonic() - revoked_at <= ttl_s + 0.5
        finally:
            await other.aclose()

    def test_the_default_bound_is_five_seconds(self) -> None:
        """The documented revocation bound: the default auth cache TTL is 5 s."""
        assert msgspec.structs.fields(Settings)  # the Struct is introspectable
        assert Settings().auth_cache_ttl_s == 5.0
