"""Logs: one `request` event per request with its id; never an API key or message content at info."""

from __future__ import annotations

import structlog

from tests.http.conftest import Api

SECRET_CONTENT = "my very private question about invoice 4711"


class TestRequestLogs:
    async def test_no_key_or_content_at_info(self, api: Api) -> None:
        """A full exchange logs request events with ids, and neither the key nor the content."""
        # merge_contextvars: the request id is bound per request, as in production.
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
            chat = (await api.create_chat())["chat_id"]
            assert (await api.send(chat, SECRET_CONTENT))[0] == 200
            await api.call("GET", f"/chats/{chat}/messages/")
            await api.call("GET", "/chat-config/", key="clk_a_wrong_key_that_should_not_be_logged")
        requests = [e for e in events if e["event"] == "request"]
        assert len(requests) == 4
        assert all(e["request_id"] for e in requests)
        assert {e["status"] for e in requests} == {200, 401}
        text = repr([e for e in events if e["log_level"] != "debug"])
        assert api.api_key not in text
        assert "clk_a_wrong_key" not in text
        assert "invoice 4711" not in text
        assert "offline model" not in text

    async def test_unexpected_errors_are_500_with_request_id_and_no_traceback(self, api: Api) -> None:
        """An internal failure answers 500 with the request id and no Python details in the body."""

        async def boom(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("secret internals")

        from service.appkeys import EXCHANGE

        exchange = api.client.app[EXCHANGE]
        exchange.send = boom  # type: ignore[method-assign,assignment]
        chat = (await api.create_chat())["chat_id"]
        with structlog.testing.capture_logs() as events:
            status, body, headers = await api.call(
                "POST", "/chats/messages/", json={"chat_id": chat, "content": "x"}
            )
        assert status == 500
        assert body["code"] == "internal_error"
        assert body["request_id"] == headers["X-Request-ID"]
        assert "secret internals" not in repr(body)
        assert any(e["event"] == "unhandled_error" for e in events)
