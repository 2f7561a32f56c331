"""POST /chats/messages/ as Server-Sent Events on the offline model (api.md Part C)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import msgspec
import pytest
from aiohttp import ClientResponse
from hypothesis import given
from hypothesis import strategies as st

import ledger
from service import streaming
from service.app import create_app
from service.providers import (
    CompletionRequest,
    ProviderError,
    ReplyStream,
    StreamEnd,
    estimate_prompt_tokens,
)
from service.providers.offline import OfflineModel
from service.settings import Settings
from tests.http.conftest import Api, AppFactory, new_tenant
from tests.providers.sse import STREAM_HEADERS, Event, all_events, reply_of

CONTENT = "What does a token budget do?"


async def stream(
    api: Api, chat_id: str, *, via: str = "accept", **fields: Any
) -> tuple[ClientResponse, list[Event]]:
    """Send a message asking for a stream (by Accept header or by `"stream": true`)."""
    body = {"chat_id": chat_id, "content": CONTENT, **fields}
    headers = {"X-API-Key": api.api_key}
    if via == "accept":
        headers.update(STREAM_HEADERS)
    else:
        body["stream"] = True
    async with api.client.post(
        "/chats/messages/", data=msgspec.json.encode(body), headers=headers
    ) as response:
        received = await all_events(response) if response.status == 200 else []
        await response.read()
        return response, received


class TestStreamedReply:
    @pytest.mark.parametrize("via", ["accept", "body"])
    async def test_deltas_then_the_saved_message(self, api: Api, via: str) -> None:
        """Deltas word by word, then one `done` event with the saved AI message (the JSON of the
        non-streamed answer), its charge and the chat's balance."""
        chat = await api.create_chat(1000)
        response, received = await stream(api, chat["chat_id"], via=via)
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["X-Request-ID"]
        names = [name for name, _ in received]
        assert names[-1] == "done"
        assert set(names[:-1]) == {"delta"}
        assert len(names) > 10
        done = received[-1][1]
        assert done["message"]["content"] == reply_of(received)
        history = (await api.call("GET", f"/chats/{chat['chat_id']}/messages/"))[1]["items"]
        assert done["message"] == history[1]
        assert done["tokens_charged"] == done["message"]["tokens_charged"]
        assert done["prompt_tokens"] + done["completion_tokens"] == done["tokens_charged"]
        assert done["estimated"] is False
        chat_after = (await api.call("GET", f"/chats/{chat['chat_id']}"))[1]
        assert (done["token_limit"], done["token_used"]) == (1000.0, chat_after["token_used"])

    async def test_streamed_and_whole_replies_charge_the_same(self, api: Api) -> None:
        """The same prompt costs the same, and saves the same reply, streamed or not."""
        first, second = (await api.create_chat(1000))["chat_id"], (await api.create_chat(1000))["chat_id"]
        status, whole = await api.send(first, CONTENT)
        assert status == 200
        _response, received = await stream(api, second)
        done = received[-1][1]["message"]
        assert (done["content"], done["tokens_charged"]) == (whole["content"], whole["tokens_charged"])
        assert whole["tokens_charged"] == 51.0

    async def test_a_reply_cut_by_the_budget_is_flagged_truncated(self, api: Api) -> None:
        """A chat that can pay for only a few reply tokens streams exactly those, flagged truncated."""
        chat = (await api.create_chat(10))["chat_id"]
        _response, received = await stream(api, chat)
        done = received[-1][1]
        assert done["message"]["truncated"] is True
        assert done["token_used"] == 10.0
        assert done["completion_tokens"] == len([name for name, _ in received if name == "delta"])


class TestErrorsBeforeTheStream:
    @pytest.mark.parametrize(
        ("case", "status", "code"),
        [
            ("poor", 402, "insufficient_tokens"),
            ("unknown", 404, "chat_not_found"),
            ("deleted", 404, "chat_deleted"),
            ("blank", 422, "invalid_content"),
        ],
    )
    async def test_stay_json_with_their_status(self, api: Api, case: str, status: int, code: str) -> None:
        """A stream that cannot start answers the plain JSON error, whatever the Accept header says."""
        chat = (await api.create_chat(1 if case == "poor" else 1000))["chat_id"]
        if case == "deleted":
            await api.call("DELETE", f"/chats/{chat}")
        chat_id = "6e380121-1bf8-4435-8c62-7d090ac42af8" if case == "unknown" else chat
        content = " " if case == "blank" else CONTENT
        answer, body, headers = await api.call(
            "POST", "/chats/messages/", json={"chat_id": chat_id, "content": content}, headers=STREAM_HEADERS
        )
        assert (answer, body["code"]) == (status, code)
        assert headers["Content-Type"].startswith("application/json")

    async def test_unauthorized_stays_json(self, api: Api) -> None:
        """A missing key is the JSON 401 before anything else."""
        answer, body, _ = await api.call(
            "POST",
            "/chats/messages/",
            json={"chat_id": "x", "content": "hi"},
            key=None,
            headers=STREAM_HEADERS,
        )
        assert answer == 401
        assert "code" in body

    async def test_a_model_that_fails_to_start_is_a_json_502(
        self, aiohttp_client: Any, redis_client: Any, tenants: ledger.TenantStore, test_settings: Settings
    ) -> None:
        """The model failing before its first delta is the same 502 as without streaming: nothing
        charged, nothing held, nothing saved."""
        _config, key = await new_tenant(tenants)
        api = Api(
            await aiohttp_client(create_app(test_settings, redis=redis_client, provider=NoStart())), key
        )
        chat = (await api.create_chat(1000))["chat_id"]
        answer, body, headers = await api.call(
            "POST", "/chats/messages/", json={"chat_id": chat, "content": "hi"}, headers=STREAM_HEADERS
        )
        assert (answer, body["code"], headers["Retry-After"]) == (502, "upstream_error", "1")
        balance = (await api.call("GET", f"/chats/{chat}"))[1]
        assert balance["token_used"] == 0.0
        meta = await redis_client.hgetall(ledger.Keyspace("cltest").chat_meta(chat))
        assert meta["reserved"] == "0"
        assert (await api.call("GET", f"/chats/{chat}/messages/"))[1]["total"] == 0


class TestProvidersWithoutStreaming:
    async def test_a_whole_reply_is_streamed_as_one_delta(
        self,
        make_client: AppFactory,
        aiohttp_client: Any,
        redis_client: Any,
        tenants: ledger.TenantStore,
        test_settings: Settings,
    ) -> None:
        """A provider with no `open_stream` (a wrapper, a test double) still streams: one delta with
        the whole reply, charged like the JSON answer."""
        api = await _api(WholeOnly(), aiohttp_client, redis_client, tenants, test_settings)
        chat = (await api.create_chat(1000))["chat_id"]
        _response, received = await stream(api, chat)
        assert [name for name, _ in received] == ["delta", "done"]
        assert received[-1][1]["tokens_charged"] == 51.0


class TestQuietAndStalledStreams:
    async def test_a_quiet_stream_is_pinged(
        self,
        monkeypatch: pytest.MonkeyPatch,
        aiohttp_client: Any,
        redis_client: Any,
        tenants: ledger.TenantStore,
        test_settings: Settings,
    ) -> None:
        """A model that goes quiet mid-reply: the stream carries `: ping` comments meanwhile (which
        EventSource skips), at the interval and not more often, and the reply is whole."""
        monkeypatch.setattr(streaming, "PING_INTERVAL_S", 0.05)
        provider = Scripted([(["One"], 0.0), ([" two"], 0.4), ([" three"], 0.0)])
        api = await _api(provider, aiohttp_client, redis_client, tenants, test_settings)
        chat = (await api.create_chat(1000))["chat_id"]
        body = msgspec.json.encode({"chat_id": chat, "content": CONTENT, "stream": True})
        async with api.client.post(
            "/chats/messages/", data=body, headers={"X-API-Key": api.api_key}
        ) as response:
            raw = await response.text()
        assert response.status == 200
        pings = raw.count(": ping\r\n\r\n")
        assert 3 <= pings <= 9, raw
        assert raw.index(": ping") > raw.index('"One"')
        assert raw.rindex(": ping") < raw.index('" two"')
        assert '"content":"One two three"' in raw.rsplit("event: done", 1)[1]

    async def test_a_client_that_stops_reading_is_cut_off_and_pays_for_what_was_sent(
        self,
        monkeypatch: pytest.MonkeyPatch,
        aiohttp_client: Any,
        redis_client: Any,
        tenants: ledger.TenantStore,
        test_settings: Settings,
    ) -> None:
        """A client that takes no bytes: once a write has waited the send timeout, the connection is
        aborted, the model is stopped, and the chat pays for the deltas written before, the hold
        resolved."""
        monkeypatch.setattr(streaming, "SEND_TIMEOUT_S", 0.3)
        piece = "x" * 40_000
        provider = Scripted([([piece], 0.0)] * 400)
        settings = msgspec.structs.replace(test_settings, max_output_tokens=1000)
        api = await _api(provider, aiohttp_client, redis_client, tenants, settings)
        chat = (await api.create_chat(100_000))["chat_id"]
        body = msgspec.json.encode({"chat_id": chat, "content": CONTENT, "stream": True})
        head = (
            f"POST /chats/messages/ HTTP/1.1\r\nHost: test\r\nX-API-Key: {api.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        server = api.client.server
        await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
        try:
            await asyncio.get_running_loop().sock_sendall(sock, head + body)
            for _ in range(100):  # the hold is resolved once the stall was noticed
                await asyncio.sleep(0.1)
                status, history, _ = await api.call("GET", f"/chats/{chat}/messages/")
                if status == 200 and len(history["items"]) == 2:
                    break
        finally:
            sock.close()
        assert provider.closed, "the model was not stopped"
        reply = history["items"][1]
        assert reply["truncated"] is True
        sent = len(reply["content"]) // len(piece)
        assert 0 < sent < 400
        chat_after = (await api.call("GET", f"/chats/{chat}"))[1]
        assert provider.request is not None
        prompt = estimate_prompt_tokens(provider.request, provider.count_tokens)
        assert reply["tokens_charged"] == prompt + sent == chat_after["token_used"]
        meta = await redis_client.hgetall(ledger.Keyspace(settings.key_prefix).chat_meta(chat))
        assert meta["reserved"] == "0"


async def _api(
    provider: Any, aiohttp_client: Any, redis_client: Any, tenants: ledger.TenantStore, settings: Settings
) -> Api:
    _config, key = await new_tenant(tenants)
    return Api(await aiohttp_client(create_app(settings, redis=redis_client, provider=provider)), key)


class Scripted(OfflineModel):
    """An offline model whose streams are the given batches of deltas, each after its pause."""

    def __init__(self, script: Sequence[tuple[list[str], float]]) -> None:
        super().__init__()
        self.script = script
        self.closed = False
        self.request: CompletionRequest | None = None

    async def open_stream(self, request: CompletionRequest) -> ReplyStream:
        self.request = request
        return ReplyStream(request, self._events(), self.count_tokens)

    async def _events(self) -> AsyncGenerator[list[str] | StreamEnd, None]:
        try:
            for batch, pause_s in self.script:
                await asyncio.sleep(pause_s)
                yield batch
        except GeneratorExit:
            self.closed = True
            raise
        yield StreamEnd(truncated=False)


class NoStart(OfflineModel):
    """An offline model whose streams fail before the first delta."""

    async def open_stream(self, request: CompletionRequest) -> ReplyStream:
        raise ProviderError("The model answered HTTP 500.")


class WholeOnly:
    """Answers whole replies only (no open_stream), like a provider wrapper might."""

    name = "whole-only"

    def __init__(self) -> None:
        self.inner = OfflineModel()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def complete(self, request: CompletionRequest) -> Any:
        return await self.inner.complete(request)

    async def close(self) -> None:
        return None


# Any character a decoded JSON string can hold (not a lone surrogate), and the ones JSON escapes.
_DELTA_CHARACTERS = st.sampled_from('a",\\\n\t é\x00') | st.characters(exclude_categories=["Cs"])


@given(st.lists(st.text(alphabet=_DELTA_CHARACTERS, min_size=1), min_size=1))
def test_delta_events_are_framed_as_each_event_alone(texts: list[str]) -> None:
    """Quotes, commas, backslashes and control characters in a delta: the batch's bytes are still
    exactly its events framed one by one."""
    expected = b"".join(streaming._event("delta", {"content": text}) for text in texts)
    assert streaming.delta_events(texts) == expected
