"""Tenant isolation: a key of config A can neither see nor change any chat of config B (Part B 7)."""

from __future__ import annotations

import ledger
from tests.http.conftest import Api, AppFactory, new_tenant


class TestIsolation:
    async def test_every_chat_endpoint_reads_another_configs_chat_as_missing(
        self, make_client: AppFactory, tenants: ledger.TenantStore
    ) -> None:
        """Every chat endpoint answers 404 chat_not_found for B's chat with A's key, and B's chat is
        untouched afterwards."""
        client = await make_client()
        _a, key_a = await new_tenant(tenants)
        _b, key_b = await new_tenant(tenants)
        alice, bob = Api(client, key_a), Api(client, key_b)
        chat = (await bob.create_chat(1000))["chat_id"]
        assert (await bob.send(chat))[0] == 200
        _, before, _ = await bob.call("GET", f"/chats/{chat}")

        for method, path, payload in [
            ("POST", "/chats/messages/", {"chat_id": chat, "content": "hi"}),
            ("GET", f"/chats/{chat}/messages/", None),
            ("PUT", f"/chats/{chat}/tokens/", {"additional_tokens": 5}),
            ("DELETE", f"/chats/{chat}", None),
            ("GET", f"/chats/{chat}", None),
        ]:
            status, body, _ = await alice.call(method, path, json=payload)
            assert (status, body["code"]) == (404, "chat_not_found"), (method, path)

        _, listing, _ = await alice.call("GET", "/chats/by-config-id", params={"include_deleted": "true"})
        assert listing["total"] == 0
        _, after, _ = await bob.call("GET", f"/chats/{chat}")
        assert after == before
        _, history, _ = await bob.call("GET", f"/chats/{chat}/messages/")
        assert history["total"] == 2
