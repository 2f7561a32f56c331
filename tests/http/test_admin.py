"""The admin API: bearer auth, configs, keys, any chat, restore, journal and reconciliation."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import ledger
from tests.http.conftest import Api, AppFactory, fill, new_tenant, routed

TOKEN = "admin-secret-token"


class Admin:
    def __init__(self, client: TestClient[web.Request, web.Application], token: str | None = TOKEN) -> None:
        self.client, self.token = client, token

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token is not None else {}
        async with self.client.request(method, path, json=json, headers=headers) as response:
            return response.status, await response.json()


@pytest.fixture
async def admin_client(make_client: AppFactory) -> TestClient[web.Request, web.Application]:
    return await make_client(admin_token=TOKEN)


class TestAdminAuth:
    async def test_off_without_a_token_setting(self, make_client: AppFactory) -> None:
        """With no admin token configured, the admin routes do not exist (404)."""
        admin = Admin(await make_client())
        assert (await admin.call("GET", "/admin/configs"))[0] == 404

    @pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x"])
    async def test_missing_or_wrong_token_is_401(
        self, admin_client: TestClient[web.Request, web.Application], token: str | None
    ) -> None:
        """Every admin route the router holds refuses a missing or wrong bearer token with 401, before it
        reads a body or looks anything up."""
        admin = Admin(admin_client, token)
        unknown = "5b7a3c1e-0000-4000-8000-000000000000"
        ids = {"config_id": unknown, "chat_id": unknown, "key_id": "0123456789abcdef"}
        routes = routed("admin")
        assert ("POST", "/admin/configs") in routes
        for method, template in routes:
            status, body = await admin.call(method, fill(template, ids))
            assert (status, body["code"]) == (401, "invalid_admin_token"), (method, template)

    async def test_an_api_key_is_not_an_admin_token(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        """A tenant's API key does not open the admin API."""
        _config, key = await new_tenant(tenants)
        assert (await Admin(admin_client, key).call("GET", "/admin/configs"))[0] == 401


class TestConfigsAndKeys:
    async def test_config_lifecycle_through_the_api(
        self, admin_client: TestClient[web.Request, web.Application]
    ) -> None:
        """Create with every field, read, patch some, issue and list and revoke keys, delete."""
        admin = Admin(admin_client)
        status, config = await admin.call("POST", "/admin/configs", json={
            "agent_name": "Bot", "company_name": "Acme", "primary_color": "#FF0000",
            "system_prompt": "Be brief.",
            "max_output_tokens": 64, "temperature": 0.2, "prompt_token_weight": 0.5,
            "completion_token_weight": 2.0, "rate_limit_per_s": 5.0, "rate_limit_burst": 10,
        })  # fmt: skip
        assert status == 200
        assert (config["prompt_token_weight"], config["completion_token_weight"]) == (0.5, 2.0)
        assert config["rate_limit_burst"] == 10
        config_id = config["config_id"]
        status, patched = await admin.call("PATCH", f"/admin/configs/{config_id}", json={"header_text": "Hi"})
        assert (status, patched["header_text"], patched["system_prompt"]) == (200, "Hi", "Be brief.")
        assert (await admin.call("GET", "/admin/configs"))[1]["items"][0]["config_id"] == config_id

        status, issued = await admin.call("POST", f"/admin/configs/{config_id}/keys")
        assert status == 200
        api = Api(admin_client, issued["api_key"])
        status, public, _ = await api.call("GET", "/chat-config/")
        assert (status, public["header_text"], public["primary_color"]) == (200, "Hi", "#FF0000")
        _, keys = await admin.call("GET", f"/admin/configs/{config_id}/keys")
        assert [k["key_id"] for k in keys["items"]] == [issued["key_id"]]
        assert issued["api_key"] not in repr(keys)
        assert (await admin.call("DELETE", f"/admin/configs/{config_id}/keys/{issued['key_id']}"))[0] == 200
        assert (await api.call("GET", "/chat-config/"))[0] == 401
        assert (await admin.call("DELETE", f"/admin/configs/{config_id}/keys/{issued['key_id']}"))[0] == 404

        assert (await admin.call("DELETE", f"/admin/configs/{config_id}"))[0] == 200
        assert (await admin.call("GET", f"/admin/configs/{config_id}"))[0] == 404

    @pytest.mark.parametrize(
        "body",
        [
            {"company_name": "no agent"},
            {"agent_name": "A", "company_name": "B", "prompt_token_weight": 0.0001},
            {"agent_name": "A", "company_name": "B", "max_output_tokens": 0},
            {"agent_name": "A", "company_name": "B", "rate_limit_per_s": -1},
            {"agent_name": "A", "company_name": "B", "temperature": 3},
        ],
    )
    async def test_invalid_configs_are_422(
        self, admin_client: TestClient[web.Request, web.Application], body: dict[str, Any]
    ) -> None:
        """Missing names, weights with more than 3 decimals, and out-of-range values are 422."""
        status, answer = await Admin(admin_client).call("POST", "/admin/configs", json=body)
        assert status == 422, answer

    async def test_deleting_a_config_revokes_its_keys(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        """After DELETE /admin/configs/{id} none of its keys authenticates."""
        config, key = await new_tenant(tenants)
        assert (await Admin(admin_client).call("DELETE", f"/admin/configs/{config.config_id}"))[0] == 200
        assert (await Api(admin_client, key).call("GET", "/chat-config/"))[0] == 401


class TestChats:
    async def test_any_chat_history_restore_journal(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        """The admin reads a deleted chat and its history, restores it, and reads a reconciling journal."""
        _config, key = await new_tenant(tenants)
        api, admin = Api(admin_client, key), Admin(admin_client)
        chat = (await api.create_chat(500))["chat_id"]
        _, reply = await api.send(chat, "hello")
        await api.call("PUT", f"/chats/{chat}/tokens/", json={"additional_tokens": 10})
        await api.call("DELETE", f"/chats/{chat}")

        status, state = await admin.call("GET", f"/admin/chats/{chat}")
        assert (status, state["deleted"], state["token_reserved"]) == (200, True, 0.0)
        assert state["deleted_at"] is not None
        _, history = await admin.call("GET", f"/admin/chats/{chat}/messages/")
        assert [m["content"] for m in history["items"]] == ["hello", reply["content"]]

        status, restored = await admin.call("POST", f"/admin/chats/{chat}/restore")
        assert (status, restored["deleted"]) == (200, False)
        assert (await admin.call("POST", f"/admin/chats/{chat}/restore"))[0] == 409
        assert (await api.send(chat, "again"))[0] == 200

        _, journal = await admin.call("GET", f"/admin/chats/{chat}/journal")
        assert [e["op"] for e in journal["items"]] == [
            "create",
            "reserve",
            "settle",
            "top_up",
            "reserve",
            "settle",
        ]
        _, rec = await admin.call("GET", f"/admin/chats/{chat}/reconciliation")
        assert rec["ok"] is True
        assert rec["journal_used"] == rec["token_used"] > 0
        assert rec["journal_limit"] == 510.0

    async def test_unknown_chat_is_404(self, admin_client: TestClient[web.Request, web.Application]) -> None:
        """Unknown or malformed chat ids are 404 on the admin chat routes."""
        admin = Admin(admin_client)
        for path in ["/admin/chats/5b7a3c1e-0000-4000-8000-000000000000", "/admin/chats/nope/journal"]:
            assert (await admin.call("GET", path))[0] == 404
