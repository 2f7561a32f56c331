"""Idempotency-Key over HTTP: a retry gets the first response byte for byte and is applied once."""

from __future__ import annotations

from typing import Any

import pytest

from tests.http.conftest import Api


async def raw_call(api: Api, method: str, path: str, body: bytes, key: str | None) -> tuple[int, bytes]:
    headers = {"X-API-Key": api.api_key, "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with api.client.request(method, path, data=body, headers=headers) as response:
        return response.status, await response.read()


class TestCreateChat:
    async def test_retry_gets_the_same_bytes_and_one_chat(self, api: Api) -> None:
        """POSTs with one key create one chat and answer identical bytes; 1000 and 1000.0 are one request."""
        first = await raw_call(api, "POST", "/chats/", b'{"token_limit": 1000}', "create-abc")
        again = await raw_call(api, "POST", "/chats/", b'{"token_limit": 1000.0}', "create-abc")
        assert first[0] == 200
        assert again == first
        _, page, _ = await api.call("GET", "/chats/by-config-id")
        assert page["total"] == 1

    async def test_same_key_other_body_is_422(self, api: Api) -> None:
        """The key of one creation with another token_limit is 422 and creates nothing."""
        await raw_call(api, "POST", "/chats/", b'{"token_limit": 1000}', "k1")
        status, body, _ = await api.call(
            "POST", "/chats/", json={"token_limit": 5}, headers={"Idempotency-Key": "k1"}
        )
        assert (status, body["code"]) == (422, "idempotency_key_reused")
        assert (await api.call("GET", "/chats/by-config-id"))[1]["total"] == 1

    async def test_rejected_request_stores_nothing(self, api: Api) -> None:
        """A 422 for a bad body records nothing: the corrected retry with the same key succeeds."""
        bad = await raw_call(api, "POST", "/chats/", b'{"token_limit": -1}', "k2")
        assert bad[0] == 422
        good = await raw_call(api, "POST", "/chats/", b'{"token_limit": 10}', "k2")
        assert good[0] == 200

    @pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "é"])
    async def test_malformed_key_is_400(self, api: Api, key: str) -> None:
        """An empty, over-long or non-ASCII Idempotency-Key is 400."""
        headers = {"X-API-Key": api.api_key, "Idempotency-Key": key}
        async with api.client.post("/chats/", json={"token_limit": 1}, headers=headers) as response:
            body: Any = await response.json()
            assert (response.status, body["code"]) == (400, "invalid_idempotency_key")


class TestAddTokens:
    async def test_retry_adds_once_with_the_same_bytes(self, api: Api) -> None:
        """A repeated top-up answers the first response's bytes and adds the tokens once."""
        chat = (await api.create_chat(100))["chat_id"]
        path = f"/chats/{chat}/tokens/"
        first = await raw_call(api, "PUT", path, b'{"additional_tokens": 50}', "top-1")
        await api.send(chat)
        again = await raw_call(api, "PUT", path, b'{"additional_tokens": 50.0}', "top-1")
        assert first[0] == 200
        assert again == first
        _, state, _ = await api.call("GET", f"/chats/{chat}")
        assert state["token_limit"] == 150.0

    async def test_same_key_other_amount_is_422(self, api: Api) -> None:
        """The key of one top-up with another amount is 422 and adds nothing."""
        chat = (await api.create_chat(100))["chat_id"]
        await raw_call(api, "PUT", f"/chats/{chat}/tokens/", b'{"additional_tokens": 50}', "top-2")
        status, _ = await raw_call(
            api, "PUT", f"/chats/{chat}/tokens/", b'{"additional_tokens": 60}', "top-2"
        )
        assert status == 422
        assert (await api.call("GET", f"/chats/{chat}"))[1]["token_limit"] == 150.0
