"""Every documented error status (api.md Part B) with its JSON body, and nothing half-written."""

from __future__ import annotations

from typing import Any

import pytest

import ledger
from tests.http.conftest import Api, AppFactory, fill, new_tenant, routed

UNKNOWN_CHAT = "5b7a3c1e-0000-4000-8000-000000000000"


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict)
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if code is not None:
        assert body["code"] == code


class TestBadRequest:
    @pytest.mark.parametrize(
        ("path", "raw", "code"),
        [
            ("/chats/", b"{not json", "malformed_json"),
            ("/chats/", b"", "malformed_json"),
            ("/chats/", b"[1, 2]", "invalid_body"),
            ("/chats/", b'"a string"', "invalid_body"),
            ("/chats/messages/", b'{"content": "hi"}', "chat_id_required"),
            ("/chats/messages/", b'{"chat_id": 5, "content": "hi"}', "chat_id_required"),
            ("/chats/messages/", b'{"chat_id": null, "content": "hi"}', "chat_id_required"),
            ("/chats/messages/", b'{"chat_id": "x", "content": "\\ud800"}', "malformed_json"),
        ],
    )
    async def test_400(self, api: Api, path: str, raw: bytes, code: str) -> None:
        """Malformed JSON, a non-object body and a missing chat_id are 400 with a code."""
        status, body, _ = await api.call("POST", path, data=raw)
        assert_error(status, body, 400, code)


class TestDeepNesting:
    @pytest.mark.parametrize(
        "raw",
        [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
         b'{"token_limit": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"],
        ids=["arrays", "objects", "inside-a-valid-object"],
    )  # fmt: skip
    async def test_400_not_500(self, api: Api, raw: bytes) -> None:
        """JSON nested past the recursion limit is 400 malformed_json on every JSON endpoint; nothing
        is created or charged."""
        chat = (await api.create_chat())["chat_id"]
        for method, path in [
            ("POST", "/chats/"),
            ("POST", "/chats/messages/"),
            ("PUT", f"/chats/{chat}/tokens/"),
        ]:
            status, body, _ = await api.call(method, path, data=raw)
            assert_error(status, body, 400, "malformed_json")
        _, page, _ = await api.call("GET", "/chats/by-config-id")
        assert page["total"] == 1
        _, after, _ = await api.call("GET", f"/chats/{chat}")
        assert (after["token_limit"], after["token_used"]) == (1000.0, 0.0)


API_KEY_ROUTES = routed("api_key")


class TestUnauthorized:
    def test_the_router_gives_every_endpoint(self) -> None:
        """The routes come from the router: the contract's seven and Part C's chat read are there."""
        assert {
            ("GET", "/chat-config/"), ("POST", "/chats/"), ("POST", "/chats/messages/"),
            ("GET", "/chats/{chat_id}/messages/"), ("PUT", "/chats/{chat_id}/tokens/"),
            ("GET", "/chats/by-config-id"), ("DELETE", "/chats/{chat_id}"), ("GET", "/chats/{chat_id}"),
        } <= set(API_KEY_ROUTES)  # fmt: skip

    def test_only_operations_and_the_widget_take_no_credentials(self) -> None:
        """A route documented as open is an operations route or the widget's (which holds its own key),
        so a new chats route cannot leave this test's loop by being documented as open."""
        open_routes = [template for _method, template in routed("none")]
        assert open_routes
        assert [t for t in open_routes if not t.startswith(("/widget/", "/docs", "/openapi.json", "/healthz",
                                                             "/readyz", "/metrics"))] == []  # fmt: skip

    @pytest.mark.parametrize("key", [None, "", "clk_wrong", "x" * 500])
    async def test_401_on_every_endpoint(self, api: Api, key: str | None) -> None:
        """A missing or unknown key is 401 (never 403) on every route that takes an API key, before its
        body is read (none is sent)."""
        chat = (await api.create_chat())["chat_id"]
        for method, template in API_KEY_ROUTES:
            status, body, _ = await api.call(method, fill(template, {"chat_id": chat}), key=key)
            assert_error(status, body, 401)

    async def test_a_revoked_key_is_refused(
        self, make_client: AppFactory, tenants: ledger.TenantStore
    ) -> None:
        """Revoking a key makes it 401 (the test app trusts nothing from a cache)."""
        _config, key = await new_tenant(tenants)
        api = Api(await make_client(), key)
        assert (await api.call("GET", "/chat-config/"))[0] == 200
        assert await tenants.revoke_key_value(key)
        assert_error(*(await api.call("GET", "/chat-config/"))[:2], 401, "invalid_api_key")


class TestPaymentRequired:
    async def test_402_with_figures_and_nothing_saved(self, api: Api) -> None:
        """A chat that cannot pay the prompt and one reply token answers 402 before generating."""
        chat = (await api.create_chat(3))["chat_id"]
        status, body = await api.send(chat, "this message has more than three tokens")
        assert_error(status, body, 402, "insufficient_tokens")
        assert body["token_limit"] == 3.0
        assert body["token_used"] == 0.0
        assert body["tokens_available"] == 3.0
        assert body["tokens_needed"] > 3.0
        _, history, _ = await api.call("GET", f"/chats/{chat}/messages/")
        assert history["total"] == 0
        _, after, _ = await api.call("GET", f"/chats/{chat}")
        assert after["token_used"] == 0.0

    async def test_a_chat_is_never_charged_past_its_limit(self, api: Api) -> None:
        """Sending until 402, token_used never exceeds token_limit, and the last reply is truncated."""
        chat = (await api.create_chat(100))["chat_id"]
        statuses = [(await api.send(chat, "tell me more"))[0] for _ in range(6)]
        assert statuses[0] == 200
        assert 402 in statuses
        _, after, _ = await api.call("GET", f"/chats/{chat}")
        assert after["token_used"] <= after["token_limit"]
        _, history, _ = await api.call("GET", f"/chats/{chat}/messages/", params={"limit": "100"})
        assert history["items"][-1]["truncated"] is True
        assert sum(m.get("tokens_charged", 0) for m in history["items"]) == after["token_used"]


class TestNotFound:
    @pytest.mark.parametrize("chat_id", [UNKNOWN_CHAT, "not-a-uuid", "1", "../../etc"])
    async def test_unknown_or_malformed_chat_ids(self, api: Api, chat_id: str) -> None:
        """Any chat id that is not a live chat of the caller is 404 on every chat endpoint."""
        for method, path, payload in [
            ("POST", "/chats/messages/", {"chat_id": chat_id, "content": "hi"}),
            ("GET", f"/chats/{chat_id}/messages/", None),
            ("PUT", f"/chats/{chat_id}/tokens/", {"additional_tokens": 1}),
            ("DELETE", f"/chats/{chat_id}", None),
            ("GET", f"/chats/{chat_id}", None),
        ]:
            status, body, _ = await api.call(method, path, json=payload)
            assert status == 404, (method, path, body)
            assert body["code"] in ("chat_not_found", "not_found")

    async def test_deleted_chat(self, api: Api) -> None:
        """A deleted chat takes no messages or tokens, serves neither itself nor its history, and a
        second DELETE is 404."""
        chat = (await api.create_chat())["chat_id"]
        assert (await api.call("DELETE", f"/chats/{chat}"))[0] == 200
        assert_error(*(await api.call("GET", f"/chats/{chat}"))[:2], 404, "chat_deleted")
        assert_error(*(await api.send(chat)), 404, "chat_deleted")
        assert_error(*(await api.call("GET", f"/chats/{chat}/messages/"))[:2], 404, "chat_deleted")
        put = await api.call("PUT", f"/chats/{chat}/tokens/", json={"additional_tokens": 5})
        assert_error(*put[:2], 404, "chat_deleted")
        assert_error(*(await api.call("DELETE", f"/chats/{chat}"))[:2], 404, "chat_deleted")

    async def test_key_whose_config_is_gone(
        self, make_client: AppFactory, tenants: ledger.TenantStore, redis_client: Any
    ) -> None:
        """A key whose config no longer exists is 404 config_not_found."""
        config, key = await new_tenant(tenants)
        await redis_client.delete(tenants.keys.config_record(config.config_id))
        api = Api(await make_client(), key)
        for method, path in [("GET", "/chat-config/"), ("GET", "/chats/by-config-id")]:
            assert_error(*(await api.call(method, path))[:2], 404, "config_not_found")
        assert_error(
            *(await api.call("POST", "/chats/", json={"token_limit": 1}))[:2], 404, "config_not_found"
        )

    async def test_unknown_route_is_json(self, api: Api) -> None:
        """Unrouted paths answer the JSON error shape too."""
        assert_error(*(await api.call("GET", "/nowhere"))[:2], 404, "not_found")

    async def test_wrong_method_is_405_json(self, api: Api) -> None:
        """A known path with an unsupported method is 405 in the JSON error shape."""
        status, body, headers = await api.call("PATCH", "/chat-config/")
        assert_error(status, body, 405, "method_not_allowed")
        assert "GET" in headers["Allow"]


class TestUnprocessable:
    @pytest.mark.parametrize(
        "payload",
        [
            {},
            {"token_limit": None},
            {"token_limit": "100"},
            {"token_limit": True},
            {"token_limit": -1},
            {"token_limit": 1e13},
            {"token_limit": 1e400},
            {"token_limit": [1]},
        ],
    )
    async def test_token_limit(self, api: Api, payload: dict[str, Any]) -> None:
        """token_limit missing, wrong-typed, negative, infinite or over 10^12 is 422."""
        status, body, _ = await api.call("POST", "/chats/", json=payload)
        assert_error(status, body, 422)

    async def test_token_limit_as_raw_big_number(self, api: Api) -> None:
        """A JSON number too large for a float is 422 too."""
        status, body, _ = await api.call("POST", "/chats/", data=b'{"token_limit": 1e999}')
        assert_error(status, body, 422)

    @pytest.mark.parametrize("amount", [0, -5, 0.0004, "5", None, 1e13, False])
    async def test_additional_tokens(self, api: Api, amount: Any) -> None:
        """additional_tokens must be a positive number (at least 0.001 after rounding), at most 10^12."""
        chat = (await api.create_chat())["chat_id"]
        status, body, _ = await api.call("PUT", f"/chats/{chat}/tokens/", json={"additional_tokens": amount})
        assert_error(status, body, 422)
        _, after, _ = await api.call("GET", f"/chats/{chat}")
        assert after["token_limit"] == 1000.0

    async def test_limit_that_would_pass_the_maximum(self, api: Api) -> None:
        """A top-up that would push token_limit over 10^12 is 422 and changes nothing."""
        chat = (await api.create_chat(10**12))["chat_id"]
        status, body, _ = await api.call("PUT", f"/chats/{chat}/tokens/", json={"additional_tokens": 1})
        assert_error(status, body, 422, "token_limit_too_large")

    @pytest.mark.parametrize("content", ["", "   \n\t", None, 5, ["hi"], "x" * 16_001])
    async def test_content(self, api: Api, content: Any) -> None:
        """content missing, blank, not a string or over the configured length is 422; nothing saved."""
        chat = (await api.create_chat())["chat_id"]
        status, body, _ = await api.call(
            "POST", "/chats/messages/", json={"chat_id": chat, "content": content}
        )
        assert_error(status, body, 422)
        _, history, _ = await api.call("GET", f"/chats/{chat}/messages/")
        assert history["total"] == 0

    async def test_content_missing(self, api: Api) -> None:
        """A body with chat_id but no content is 422."""
        chat = (await api.create_chat())["chat_id"]
        status, body, _ = await api.call("POST", "/chats/messages/", json={"chat_id": chat})
        assert_error(status, body, 422)

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": "0"},
            {"limit": "101"},
            {"limit": "abc"},
            {"offset": "-1"},
            {"offset": "2437158561371759468491256627200"},
            {"offset": "x"},
            {"limit": ""},
        ],
    )
    async def test_paging(self, api: Api, params: dict[str, str]) -> None:
        """limit outside 1..100 or a negative or non-numeric offset is 422 on both list endpoints."""
        chat = (await api.create_chat())["chat_id"]
        for path in (f"/chats/{chat}/messages/", "/chats/by-config-id"):
            status, body, _ = await api.call("GET", path, params=params)
            assert_error(status, body, 422)

    @pytest.mark.parametrize(
        "params",
        [
            {"after": "nope"},
            {"before": "1-2-3"},
            {"after": "1-0", "before": "2-0"},
            {"after": "1-0", "offset": "3"},
        ],
    )
    async def test_cursors(self, api: Api, params: dict[str, str]) -> None:
        """A malformed cursor, two cursors, or a cursor with an offset is 422."""
        chat = (await api.create_chat())["chat_id"]
        status, body, _ = await api.call("GET", f"/chats/{chat}/messages/", params=params)
        assert_error(status, body, 422)

    async def test_include_deleted_must_be_a_boolean(self, api: Api) -> None:
        """include_deleted takes true/false."""
        status, body, _ = await api.call("GET", "/chats/by-config-id", params={"include_deleted": "maybe"})
        assert_error(status, body, 422)


class TestTooLarge:
    async def test_413_for_a_body_over_the_limit(
        self, make_client: AppFactory, tenants: ledger.TenantStore
    ) -> None:
        """A body over max_body_bytes is 413 in the JSON shape, and nothing is created."""
        _config, key = await new_tenant(tenants)
        api = Api(await make_client(max_body_bytes=1024), key)
        status, body, _ = await api.call(
            "POST", "/chats/", data=b'{"token_limit": 1, "pad": "' + b"x" * 2048 + b'"}'
        )
        assert_error(status, body, 413, "request_too_large")
        _, page, _ = await api.call("GET", "/chats/by-config-id")
        assert page["total"] == 0

    async def test_default_limit_is_one_mebibyte(self, api: Api) -> None:
        """The default limit refuses a 2 MiB message."""
        chat = (await api.create_chat())["chat_id"]
        status, body, _ = await api.call(
            "POST", "/chats/messages/", json={"chat_id": chat, "content": "x" * (2 * 1024 * 1024)}
        )
        assert_error(status, body, 413)
