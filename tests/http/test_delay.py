"""The test and demo hook CHATLEDGER_MESSAGE_DELAY_MS (service/delay.py): which requests it holds."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.delay import install_message_delay
from service.settings import Settings
from tests.http.conftest import new_tenant


async def _client(
    aiohttp_client: Any, redis: Redis, **settings: Any
) -> TestClient[web.Request, web.Application]:
    app = create_app(Settings(redis_url="redis://unused", key_prefix="cltest", **settings), redis=redis)
    install_message_delay(app)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    return client


@pytest.mark.parametrize("redis_client", ["fakeredis"], indirect=True)
class TestMessageDelay:
    """The hook holds the requests that send a message, through the API or the widget, under any base
    path, and nothing else; off, it is not installed at all."""

    async def test_holds_message_sends_only(
        self, aiohttp_client: Any, redis_client: Redis, tenants: ledger.TenantStore
    ) -> None:
        """Under /svc: the API's and the widget's message sends are held (one `message_delayed` each);
        creating a chat, reading the history and a 404 are not."""
        _config, key = await new_tenant(tenants)
        client = await _client(
            aiohttp_client, redis_client, message_delay_ms=1, base_path="/svc", widget_api_key=key
        )
        headers = {"X-API-Key": key}
        with structlog.testing.capture_logs() as logs:
            async with client.post("/svc/chats/", json={"token_limit": 100}, headers=headers) as response:
                chat_id = (await response.json())["chat_id"]
            async with client.post("/svc/widget/api/chats/") as response:
                ticket = (await response.json())["ticket"]
            assert [e for e in logs if e["event"] == "message_delayed"] == []
            sends = [("/svc/chats/messages", {"chat_id": chat_id, "content": "hi"}),
                     (f"/svc/widget/api/chats/{ticket}/messages/", {"content": "hi"})]  # fmt: skip
            for path, body in sends:
                async with client.post(path, json=body, headers=headers) as response:
                    assert response.status == 200, path
            for path in (f"/svc/chats/{chat_id}/messages/", "/svc/chats/messages/x"):
                async with client.get(path, headers=headers) as response:
                    assert response.status in (200, 404), path
        delayed = [e for e in logs if e["event"] == "message_delayed"]
        assert delayed == [{"event": "message_delayed", "delay_ms": 1, "log_level": "info"}] * 2

    async def test_off_by_default(self, aiohttp_client: Any, redis_client: Redis) -> None:
        """With the setting at 0 the app keeps only its own middleware."""
        client = await _client(aiohttp_client, redis_client)
        assert len(client.app.middlewares) == 1
