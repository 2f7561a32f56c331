"""Erasure through the admin API: an erased chat answers 404 on every route, the admin's included, and
never a 500; a whole config is erased with its keys and chats."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import ledger
from tests.http.conftest import Api, AppFactory, new_tenant
from tests.http.test_admin import TOKEN, Admin


@pytest.fixture
async def admin_client(make_client: AppFactory) -> TestClient[web.Request, web.Application]:
    return await make_client(admin_token=TOKEN)


async def chat_with_messages(api: Api) -> str:
    chat_id: str = (await api.create_chat())["chat_id"]
    for _ in range(2):
        assert (await api.send(chat_id))[0] == 200
    keyed = {"Idempotency-Key": "top-up-1"}
    status, _body, _headers = await api.call(
        "PUT", f"/chats/{chat_id}/tokens/", json={"additional_tokens": 5}, headers=keyed
    )
    assert status == 200
    return chat_id


class TestEraseChat:
    async def test_erased_chat_is_404_everywhere(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        """After `DELETE /admin/chats/{id}?erase=true`, every route that names the chat answers 404;
        another chat of the config still answers."""
        _config, api_key = await new_tenant(tenants)
        api, admin = Api(admin_client, api_key), Admin(admin_client)
        erased, kept = await chat_with_messages(api), await chat_with_messages(api)

        assert await admin.call("DELETE", f"/admin/chats/{erased}?erase=true") == (200, {"done": True})

        for method, path in [
            ("GET", f"/chats/{erased}"),
            ("GET", f"/chats/{erased}/messages/"),
            ("DELETE", f"/chats/{erased}"),
        ]:
            assert (await api.call(method, path))[0] == 404, path
        assert (await api.send(erased))[0] == 404
        top_up = {"additional_tokens": 1}
        assert (await api.call("PUT", f"/chats/{erased}/tokens/", json=top_up))[0] == 404
        for method, path in [
            ("GET", f"/admin/chats/{erased}"),
            ("GET", f"/admin/chats/{erased}/messages/"),
            ("GET", f"/admin/chats/{erased}/journal"),
            ("GET", f"/admin/chats/{erased}/reconciliation"),
            ("POST", f"/admin/chats/{erased}/restore"),
            ("DELETE", f"/admin/chats/{erased}"),
            ("DELETE", f"/admin/chats/{erased}?erase=true"),
        ]:
            assert (await admin.call(method, path))[0] == 404, path
        listing = {"include_deleted": "true"}
        status, page, _headers = await api.call("GET", "/chats/by-config-id", params=listing)
        assert (status, [item["chat_id"] for item in page["items"]]) == (200, [kept])
        assert (await api.call("GET", f"/chats/{kept}/messages/"))[1]["total"] == 4

    async def test_delete_without_erase_is_the_soft_delete(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        _config, api_key = await new_tenant(tenants)
        api, admin = Api(admin_client, api_key), Admin(admin_client)
        chat_id = await chat_with_messages(api)
        assert (await admin.call("DELETE", f"/admin/chats/{chat_id}"))[0] == 200
        status, chat = await admin.call("GET", f"/admin/chats/{chat_id}")
        assert (status, chat["deleted"]) == (200, True)
        assert (await admin.call("POST", f"/admin/chats/{chat_id}/restore"))[0] == 200

    async def test_a_bad_erase_value_is_422(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        _config, api_key = await new_tenant(tenants)
        chat_id = await chat_with_messages(Api(admin_client, api_key))
        status, body = await Admin(admin_client).call("DELETE", f"/admin/chats/{chat_id}?erase=maybe")
        assert (status, body["code"]) == (422, "validation_error")


class TestEraseConfig:
    async def test_config_and_its_chats_go(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        """`DELETE /admin/configs/{id}?erase=true` erases the config, revokes its keys, and erases every
        chat; a second call is 404. Another config keeps its chat."""
        config, api_key = await new_tenant(tenants)
        _other, other_key = await new_tenant(tenants)
        api, other, admin = Api(admin_client, api_key), Api(admin_client, other_key), Admin(admin_client)
        chats = [await chat_with_messages(api) for _ in range(3)]
        kept = await chat_with_messages(other)

        path = f"/admin/configs/{config.config_id}?erase=true"
        assert await admin.call("DELETE", path) == (200, {"done": True})

        assert (await api.call("GET", "/chats/by-config-id"))[0] == 401  # its key is revoked
        for chat_id in chats:
            assert (await admin.call("GET", f"/admin/chats/{chat_id}"))[0] == 404
        assert (await admin.call("GET", f"/admin/configs/{config.config_id}"))[0] == 404
        assert (await admin.call("DELETE", path))[0] == 404
        assert (await other.call("GET", f"/chats/{kept}"))[0] == 200
