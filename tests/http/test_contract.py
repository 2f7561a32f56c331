"""Every endpoint of api.md Part A: success shapes, both slash forms, the base path, X-Request-ID."""

from __future__ import annotations

import re
from typing import Any

import pytest

import ledger
from tests.http.conftest import Api, AppFactory, new_tenant

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CHAT_FIELDS = [
    "chat_id", "created_at", "agent_name", "creator_company_name",
    "token_limit", "token_used", "deleted", "messages",
]  # fmt: skip


class TestChatConfig:
    async def test_returns_the_config_of_the_key(
        self, make_client: AppFactory, tenants: ledger.TenantStore
    ) -> None:
        """GET /chat-config/ answers the caller's config with every field of the Config object."""
        config, key = await new_tenant(
            tenants, primary_color="#FF0000", is_full_width=True, welcome_message="Hi!"
        )
        api = Api(await make_client(), key)
        status, body, _ = await api.call("GET", "/chat-config/")
        assert status == 200
        assert list(body) == [
            "config_id", "agent_name", "company_name", "primary_color", "header_text", "logo_url",
            "welcome_message", "chat_first_page_description", "created_at", "updated_at", "is_full_width",
            "start_page_title", "start_page_slogan",
        ]  # fmt: skip
        assert body["config_id"] == config.config_id
        assert body["primary_color"] == "#FF0000"
        assert body["is_full_width"] is True
        assert body["welcome_message"] == "Hi!"
        assert ISO_Z.match(body["created_at"])


class TestCreateChat:
    @pytest.mark.parametrize(
        ("sent", "expected"), [(1000, 1000.0), (1000.0, 1000.0), (0, 0.0), (12.3456, 12.346)]
    )
    async def test_creates_with_float_or_integer_limit(self, api: Api, sent: float, expected: float) -> None:
        """token_limit may be an integer or a float; it comes back as a float rounded to 3 decimals."""
        status, body, _ = await api.call("POST", "/chats/", json={"token_limit": sent})
        assert status == 200
        assert list(body) == CHAT_FIELDS
        assert body["token_limit"] == expected
        assert isinstance(body["token_limit"], float)
        assert body["token_used"] == 0.0
        assert body["deleted"] is False
        assert body["messages"] == []
        assert body["agent_name"] == "Support Pro Agent"
        assert body["creator_company_name"] == "Your Company Inc."
        assert ISO_Z.match(body["created_at"])
        assert ledger.normalize_uuid(body["chat_id"]) == body["chat_id"]

    async def test_token_amounts_are_written_as_floats(self, api: Api) -> None:
        """The JSON text carries `1000.0`, not `1000` (api.md Part A)."""
        async with api.client.post(
            "/chats/", json={"token_limit": 1000}, headers={"X-API-Key": api.api_key}
        ) as r:
            text = await r.text()
        assert '"token_limit":1000.0' in text
        assert '"token_used":0.0' in text


class TestSendMessage:
    async def test_answers_with_the_ai_message_and_charges(self, api: Api) -> None:
        """The reply is the AI's Message; its charge is added to token_used."""
        chat = await api.create_chat(1000)
        status, body = await api.send(chat["chat_id"], "Hello there, how are you?")
        assert status == 200
        assert body["chat_id"] == chat["chat_id"]
        assert body["is_user"] is False
        assert "not an LLM" in body["content"]
        assert ISO_Z.match(body["timestamp"])
        assert body["tokens_charged"] > 0
        _, after, _ = await api.call("GET", f"/chats/{chat['chat_id']}")
        assert after["token_used"] == body["tokens_charged"]

    async def test_the_offline_model_charge_is_prompt_plus_reply_tokens(self, api: Api) -> None:
        """With weights 1.0 the charge is exactly the prompt's and the reply's token counts."""
        from service.providers.offline import OfflineModel

        model = OfflineModel()
        chat = await api.create_chat(1000)
        _, body = await api.send(chat["chat_id"], "one two three")
        assert body["tokens_charged"] == 3 + model.count_tokens(body["content"])

    async def test_history_counts_in_the_next_prompt(self, api: Api) -> None:
        """The second exchange's prompt includes the first exchange, so it costs more."""
        chat = await api.create_chat(10_000)
        _, first = await api.send(chat["chat_id"], "same words")
        _, second = await api.send(chat["chat_id"], "same words")
        assert second["tokens_charged"] > first["tokens_charged"]
        assert "1 earlier message" not in second["content"]
        assert "2 earlier messages" in second["content"]


class TestHistory:
    async def test_pages_oldest_first_with_total(self, api: Api) -> None:
        """History is a Page of Messages, user then AI, oldest first; total counts every message."""
        chat = await api.create_chat(10_000)
        for text in ("first", "second", "third"):
            assert (await api.send(chat["chat_id"], text))[0] == 200
        status, page, _ = await api.call("GET", f"/chats/{chat['chat_id']}/messages/")
        assert status == 200
        assert (page["total"], page["limit"], page["offset"]) == (6, 10, 0)
        assert [m["is_user"] for m in page["items"]] == [True, False] * 3
        assert [m["content"] for m in page["items"][::2]] == ["first", "second", "third"]
        assert "tokens_charged" not in page["items"][0]
        ids = [m["id"] for m in page["items"]]
        assert ids == sorted(ids)

    async def test_offset_and_limit_echo_and_slice(self, api: Api) -> None:
        """limit and offset select a slice and are echoed back."""
        chat = await api.create_chat(10_000)
        for text in ("a", "b", "c"):
            await api.send(chat["chat_id"], text)
        _, full, _ = await api.call("GET", f"/chats/{chat['chat_id']}/messages/", params={"limit": "100"})
        _, page, _ = await api.call(
            "GET", f"/chats/{chat['chat_id']}/messages/", params={"limit": "3", "offset": "2"}
        )
        assert (page["limit"], page["offset"], page["total"]) == (3, 2, 6)
        assert page["items"] == full["items"][2:5]

    async def test_cursor_pagination(self, api: Api) -> None:
        """after/before page by message id (Part C) and agree with the full listing."""
        chat = await api.create_chat(10_000)
        for text in ("a", "b", "c"):
            await api.send(chat["chat_id"], text)
        path = f"/chats/{chat['chat_id']}/messages/"
        _, full, _ = await api.call("GET", path, params={"limit": "100"})
        ids = [m["id"] for m in full["items"]]
        _, after, _ = await api.call("GET", path, params={"after": ids[1], "limit": "2"})
        assert [m["id"] for m in after["items"]] == ids[2:4]
        _, before, _ = await api.call("GET", path, params={"before": ids[4], "limit": "3"})
        assert [m["id"] for m in before["items"]] == ids[1:4]


class TestAddTokens:
    @pytest.mark.parametrize(("sent", "expected"), [(500, 1500.0), (0.5, 1000.5), (0.001, 1000.001)])
    async def test_adds_to_the_limit(self, api: Api, sent: float, expected: float) -> None:
        """additional_tokens is added to token_limit, not set."""
        chat = await api.create_chat(1000)
        status, body, _ = await api.call(
            "PUT", f"/chats/{chat['chat_id']}/tokens/", json={"additional_tokens": sent}
        )
        assert status == 200
        assert list(body) == CHAT_FIELDS
        assert body["token_limit"] == expected

    async def test_unblocks_a_chat_out_of_tokens(self, api: Api) -> None:
        """After a 402, a top-up lets the next message through."""
        chat = await api.create_chat(2)  # "Hello there" is 2 prompt tokens: no reply token is payable
        assert (await api.send(chat["chat_id"]))[0] == 402
        await api.call("PUT", f"/chats/{chat['chat_id']}/tokens/", json={"additional_tokens": 1000})
        assert (await api.send(chat["chat_id"]))[0] == 200


class TestListAndDelete:
    async def test_lists_the_configs_chats_oldest_first(self, api: Api) -> None:
        """by-config-id pages the key's chats by creation time; total counts them all."""
        created = [(await api.create_chat(n))["chat_id"] for n in (1, 2, 3)]
        status, page, _ = await api.call("GET", "/chats/by-config-id", params={"limit": "2"})
        assert status == 200
        assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
        assert [c["chat_id"] for c in page["items"]] == created[:2]
        _, rest, _ = await api.call("GET", "/chats/by-config-id", params={"limit": "2", "offset": "2"})
        assert [c["chat_id"] for c in rest["items"]] == created[2:]

    async def test_delete_flags_and_hides(self, api: Api) -> None:
        """DELETE answers the chat with deleted=true; listings leave it out unless asked; it is kept."""
        keep, gone = (await api.create_chat())["chat_id"], (await api.create_chat())["chat_id"]
        await api.send(gone, "remember me")
        status, body, _ = await api.call("DELETE", f"/chats/{gone}")
        assert status == 200
        assert body["deleted"] is True
        assert list(body) == CHAT_FIELDS
        _, page, _ = await api.call("GET", "/chats/by-config-id")
        assert [c["chat_id"] for c in page["items"]] == [keep]
        assert page["total"] == 1
        _, everything, _ = await api.call("GET", "/chats/by-config-id", params={"include_deleted": "true"})
        assert [c["chat_id"] for c in everything["items"]] == [keep, gone]
        assert everything["items"][1]["deleted"] is True
        # Like every other route of a deleted chat, reading it is 404 chat_deleted.
        status, chat, _ = await api.call("GET", f"/chats/{gone}")
        assert (status, chat["code"]) == (404, "chat_deleted")


# Every endpoint with a path template; {chat} is filled with a live chat id.
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/chat-config/", None),
    ("POST", "/chats/", {"token_limit": 100}),
    ("POST", "/chats/messages/", {"chat_id": "{chat}", "content": "hi"}),
    ("GET", "/chats/{chat}/messages/", None),
    ("PUT", "/chats/{chat}/tokens/", {"additional_tokens": 1}),
    ("GET", "/chats/by-config-id", None),
    ("GET", "/chats/{chat}", None),
    ("DELETE", "/chats/{chat}", None),
]


def _other_form(path: str) -> str:
    return path[:-1] if path.endswith("/") else path + "/"


def _fill(value: Any, chat_id: str) -> Any:
    if isinstance(value, str):
        return value.replace("{chat}", chat_id)
    if isinstance(value, dict):
        return {k: _fill(v, chat_id) for k, v in value.items()}
    return value


class TestPathForms:
    @pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
    @pytest.mark.parametrize("form", ["as-specified", "other-slash"])
    async def test_both_slash_forms_are_served(
        self, api: Api, method: str, path: str, body: Any, form: str
    ) -> None:
        """Each path answers 200 with and without its trailing slash, without a redirect."""
        chat_id = (await api.create_chat(1000))["chat_id"]
        target = _fill(path if form == "as-specified" else _other_form(path), chat_id)
        status, payload, headers = await api.call(method, target, json=_fill(body, chat_id))
        assert status == 200, payload
        assert headers["X-Request-ID"]

    async def test_base_path_mounts_every_route(
        self, make_client: AppFactory, tenants: ledger.TenantStore
    ) -> None:
        """With a base path the API answers under it, and not at the root."""
        _config, key = await new_tenant(tenants)
        prefix = "/micro-apps/for-api-providers/chat-service"
        client = await make_client(base_path=prefix + "/")
        api = Api(client, key, prefix=prefix)
        chat = await api.create_chat(100)
        assert (await api.send(chat["chat_id"]))[0] == 200
        assert (await api.call("GET", "/chat-config/"))[0] == 200
        assert (await Api(client, key).call("GET", "/chat-config/"))[0] == 404


class TestRequestId:
    async def test_every_response_has_one_and_a_plain_incoming_one_is_kept(self, api: Api) -> None:
        """Successes and errors carry X-Request-ID; a sane incoming id is echoed, a junk one replaced."""
        _, _, ok = await api.call("GET", "/chat-config/", headers={"X-Request-ID": "abc-123"})
        assert ok["X-Request-ID"] == "abc-123"
        _, _, err = await api.call("GET", "/chat-config/", key=None, headers={"X-Request-ID": "bad id\t"})
        assert err["X-Request-ID"] not in ("", "bad id\t")
        _, _, missing = await api.call("GET", "/nowhere")
        assert missing["X-Request-ID"]
