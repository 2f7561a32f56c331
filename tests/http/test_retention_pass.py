"""The app's background retention pass: with CHATLEDGER_DELETED_CHAT_RETENTION_S set, a chat deleted
through the API is erased for good once its retention ends; off by default, it is kept."""

from __future__ import annotations

import asyncio

import ledger
from tests.http.conftest import Api, AppFactory, new_tenant


async def erased_within(book: ledger.Ledger, chat_id: str, seconds: float) -> bool:
    """Whether the chat is gone before `seconds` pass (a wait for the background task, not a timing)."""
    for _ in range(int(seconds / 0.05)):
        try:
            await book.get_chat(None, chat_id)
        except ledger.ChatNotFound:
            return True
        await asyncio.sleep(0.05)
    return False


class TestRetentionPass:
    async def test_deleted_chat_is_erased_after_its_retention(
        self, make_client: AppFactory, tenants: ledger.TenantStore, ledger: ledger.Ledger
    ) -> None:
        _config, api_key = await new_tenant(tenants)
        client = await make_client(deleted_chat_retention_s=0.2, retention_interval_s=0.05)
        api = Api(client, api_key)
        deleted, live = (await api.create_chat())["chat_id"], (await api.create_chat())["chat_id"]
        assert (await api.send(deleted))[0] == 200
        assert (await api.call("DELETE", f"/chats/{deleted}"))[0] == 200
        assert await erased_within(ledger, deleted, 10)
        assert (await api.call("GET", f"/chats/{live}"))[0] == 200

    async def test_off_by_default(
        self, make_client: AppFactory, tenants: ledger.TenantStore, ledger: ledger.Ledger
    ) -> None:
        _config, api_key = await new_tenant(tenants)
        api = Api(await make_client(retention_interval_s=0.05), api_key)
        chat_id = (await api.create_chat())["chat_id"]
        assert (await api.call("DELETE", f"/chats/{chat_id}"))[0] == 200
        assert not await erased_within(ledger, chat_id, 0.5)
        assert (await ledger.get_chat(None, chat_id)).deleted
