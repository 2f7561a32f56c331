"""Failure paths of the exchange: a failing model or a failing Redis charges nothing and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.providers import Completion, CompletionRequest, ProviderError, ProviderTimeout
from service.providers.offline import OfflineModel
from service.settings import Settings
from tests.http.conftest import Api, new_tenant
from tests.redis_servers import RedisServer


class FailingModel(OfflineModel):
    """The offline model's counts, with a failure chosen by the test."""

    def __init__(self, failure: BaseException | None) -> None:
        self.failure = failure
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        if isinstance(self.failure, asyncio.CancelledError):
            self.started.set()
            await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return await super().complete(request)


async def _balance(redis: Redis, chat_id: str) -> dict[str, str]:
    return cast(dict[str, str], await redis.hgetall(ledger.Keyspace("cltest").chat_meta(chat_id)))


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url="redis://unused", key_prefix="cltest", auth_cache_ttl_s=0)


class TestModelFailures:
    @pytest.mark.parametrize(
        ("failure", "status", "code"),
        [
            (ProviderError("upstream 500"), 502, "upstream_error"),
            (ProviderTimeout("slow"), 504, "upstream_timeout"),
        ],
    )
    async def test_failure_voids_the_hold(
        self,
        aiohttp_client: Any,
        redis_client: Redis,
        tenants: ledger.TenantStore,
        settings: Settings,
        failure: Exception,
        status: int,
        code: str,
    ) -> None:
        """A model error answers 502 (504 on timeout) with Retry-After; nothing is charged, the hold is
        released, and the history stays empty."""
        _config, key = await new_tenant(tenants)
        model = FailingModel(failure)
        api = Api(await aiohttp_client(create_app(settings, redis=redis_client, provider=model)), key)
        chat = (await api.create_chat(1000))["chat_id"]
        answer, body, headers = await api.call(
            "POST", "/chats/messages/", json={"chat_id": chat, "content": "hi"}
        )
        assert (answer, body["code"]) == (status, code)
        assert headers["Retry-After"] == "1"
        assert model.calls == 1
        meta = await _balance(redis_client, chat)
        assert (meta["used"], meta["reserved"]) == ("0", "0")
        assert (await api.call("GET", f"/chats/{chat}/messages/"))[1]["total"] == 0

    async def test_a_cancelled_request_gives_its_hold_back(
        self, aiohttp_client: Any, redis_client: Redis, tenants: ledger.TenantStore, settings: Settings
    ) -> None:
        """When the handler is cancelled mid-call (the client went away), the hold is voided."""
        _config, key = await new_tenant(tenants)
        model = FailingModel(asyncio.CancelledError())
        app = create_app(settings, redis=redis_client, provider=model)
        api = Api(await aiohttp_client(app), key)
        chat = (await api.create_chat(1000))["chat_id"]
        from service.appkeys import EXCHANGE, TENANTS

        config = await app[TENANTS].get_config(_config.config_id)
        assert config is not None
        task = asyncio.create_task(app[EXCHANGE].send(config, chat, "hello"))
        await model.started.wait()
        assert (await _balance(redis_client, chat))["reserved"] != "0"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        meta = await _balance(redis_client, chat)
        assert (meta["used"], meta["reserved"]) == ("0", "0")


@pytest_asyncio.fixture
async def own_server() -> AsyncIterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.redis
class TestRedisFailure:
    async def test_503_while_redis_is_down_and_no_model_call(
        self, aiohttp_client: Any, own_server: RedisServer, settings: Settings
    ) -> None:
        """With Redis gone, sends answer 503 with Retry-After before any model call, /readyz is 503;
        once Redis is back the service answers again with the same client."""
        client = ledger.connect(own_server.url)
        try:
            tenants = ledger.TenantStore(client, ledger.Keyspace("cltest"))
            _config, key = await new_tenant(tenants)
            model = FailingModel(None)
            api = Api(await aiohttp_client(create_app(settings, redis=client, provider=model)), key)
            chat = (await api.create_chat(1000))["chat_id"]
            own_server.stop()
            status, body, headers = await api.call(
                "POST", "/chats/messages/", json={"chat_id": chat, "content": "x"}
            )
            assert (status, body["code"], headers["Retry-After"]) == (503, "store_unavailable", "1")
            assert model.calls == 0
            assert (await api.call("GET", "/readyz"))[0] == 503
            own_server.start()
            assert (await api.call("GET", "/readyz"))[0] == 200
            # The test server keeps nothing on disk: recovery is shown with a new tenant and chat.
            _config, api.api_key = await new_tenant(tenants)
            assert (await api.send((await api.create_chat(1000))["chat_id"]))[0] == 200
            assert model.calls == 1
        finally:
            await client.aclose()
