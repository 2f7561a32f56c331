"""`GET /admin/chats/{id}`, its reconciliation and `chatledger chat show` count a hold past its deadline as
expired, not reserved (the ledger's inspect_chat reaps it on read)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from ledger import Keyspace, Ledger, RedisClient, TenantStore, connect
from service.cli import main
from tests.http.conftest import AppFactory, new_tenant
from tests.http.test_admin import TOKEN, Admin
from tests.integration.test_expired_holds_in_admin_views import dead_worker_hold
from tests.redis_servers import RedisServer


class TestAdminViews:
    async def test_admin_chat_and_reconciliation(
        self,
        make_client: AppFactory,
        tenants: TenantStore,
        redis_client: RedisClient,
    ) -> None:
        client: TestClient[web.Request, web.Application] = await make_client(admin_token=TOKEN)
        config, _key = await new_tenant(tenants)
        keys = Keyspace("cltest")
        book = Ledger(redis_client, keys)
        chat = await book.create_chat(config, 1_000_000)
        await dead_worker_hold(redis_client, keys, config, chat.chat_id)
        admin = Admin(client)

        status, state = await admin.call("GET", f"/admin/chats/{chat.chat_id}")
        assert (status, state["token_reserved"]) == (200, 0.0)
        _, rec = await admin.call("GET", f"/admin/chats/{chat.chat_id}/reconciliation")
        assert (rec["ok"], rec["token_reserved"], rec["journal_reserved"]) == (True, 0.0, 0.0)


@pytest.mark.redis
def test_cli_chat_show(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("CHATLEDGER_KEY_PREFIX", "clholds")
    chat_id = asyncio.run(_chat_with_dead_hold(redis_server))
    assert main(["chat", "show", chat_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["token_reserved"] == 0.0


async def _chat_with_dead_hold(server: RedisServer) -> str:
    client = connect(server.url)
    try:
        keys = Keyspace("clholds")
        config = await TenantStore(client, keys).create_config(agent_name="A", company_name="C")
        book = Ledger(client, keys)
        await book.start()
        chat = await book.create_chat(config, 1_000_000)
        await dead_worker_hold(client, keys, config, chat.chat_id)
        assert (await book.get_chat(None, chat.chat_id)).reserved_milli > 0
        return chat.chat_id
    finally:
        await client.aclose()
