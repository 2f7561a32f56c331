"""What the `openai` provider's exchanges charge, through the app, on the fake upstream.

Every figure is exact. The config weighs prompt tokens 1.5 and reply tokens 2.0; the system prompt
"You are terse." and the message "Tell me about foxes" are 4 tokens each by the service's estimator
(8 in all), and 7 each by the fake's count, which adds 3 per message as real chat templates do (14).
The fake's reply is 10 tokens. So:

- with the upstream's usage, streamed or not: 14 x 1.5 + 10 x 2.0 = 41.0 tokens;
- with no usage (estimated, flagged): 8 x 1.5 + 10 x 2.0 = 32.0 tokens;
- a stream the client leaves, or the model breaks, after k = 3 deltas: 8 x 1.5 + 3 x 2.0 = 18.0
  tokens, saved truncated;
- every failure before any delta reached the client: 0, with `reserved` back where it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import pytest_asyncio
import structlog
from aiohttp import ClientSession, web
from aiohttp.test_utils import unused_port
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.providers import provider_from_settings
from service.settings import Settings, SettingsError, settings_from_env
from tests.http.conftest import Api
from tests.providers.fake_openai import Behavior, FakeOpenAI
from tests.providers.sse import STREAM_HEADERS, events, reply_of
from tests.providers.upstream import (
    CONTENT,
    KEYS,
    PATIENT_S,
    Upstream,
    done_of,
    eventually,
    send,
)


@pytest_asyncio.fixture
async def upstream(
    aiohttp_client: Any, redis_client: Redis, tenants: ledger.TenantStore, fake_openai: FakeOpenAI
) -> Upstream:
    return Upstream(redis_client, tenants, fake_openai, aiohttp_client)


class TestSameChargeEitherWay:
    @pytest.mark.parametrize(("usage", "charge"), [(True, 41.0), (False, 32.0)], ids=["usage", "no-usage"])
    async def test_streamed_and_whole_replies_charge_the_same(
        self, upstream: Upstream, usage: bool, charge: float
    ) -> None:
        """The same prompt costs the same streamed or not: the upstream's usage when it sends one,
        else the estimate, flagged on the done event."""
        upstream.fake.default = Behavior(usage=usage)
        api, _config = await upstream.api()
        first, second = (await api.create_chat(1000))["chat_id"], (await api.create_chat(1000))["chat_id"]
        status, whole, _ = await send(api, first, stream=False)
        assert status == 200
        status, _, received = await send(api, second, stream=True)
        done = done_of(received)
        assert whole["tokens_charged"] == done["tokens_charged"] == charge
        assert whole["content"] == done["message"]["content"] == reply_of(received)
        assert done["estimated"] is not usage
        assert done["token_used"] == charge
        for chat in (first, second):
            assert (await upstream.meta(chat))["used"] == str(int(charge * 1000))
        json_request, stream_request = upstream.fake.requests
        assert json_request.body["stream"] is False
        assert stream_request.body["stream_options"] == {"include_usage": True}
        assert json_request.body["messages"] == stream_request.body["messages"]


class TestClientLeaves:
    async def test_a_stream_left_after_k_deltas_charges_prompt_plus_k(self, upstream: Upstream) -> None:
        """The client reads 3 deltas and disconnects: the upstream call is cancelled, 8 x 1.5 + 3 x 2.0
        = 18.0 tokens are charged (never 0, never the 8 x 1.5 + 512 x 2.0 held), the hold is released,
        and the partial reply is saved flagged truncated."""
        upstream.fake.plan(Behavior(pause_after=3))
        api, _config = await upstream.api(settings=upstream.settings(openai_read_timeout_s=PATIENT_S))
        chat = (await api.create_chat(10_000))["chat_id"]
        headers = {"X-API-Key": api.api_key, **STREAM_HEADERS}
        body = msgspec.json.encode({"chat_id": chat, "content": CONTENT})
        received: list[str] = []
        async with api.client.post("/chats/messages/", data=body, headers=headers) as response:
            async for name, data in events(response):
                assert name == "delta"
                received.append(data["content"])
                if len(received) == 3:
                    break
            assert (await upstream.meta(chat))["reserved"] == str(12_000 + 512 * 2000)
            response.close()
        await upstream.fake.disconnected.wait()
        await eventually(lambda: _reserved_is(upstream, chat, 0))
        assert (await upstream.meta(chat))["used"] == "18000"
        history = (await api.call("GET", f"/chats/{chat}/messages/"))[1]
        assert history["total"] == 2
        reply = history["items"][1]
        assert (reply["content"], reply["truncated"], reply["tokens_charged"]) == (
            "".join(received),
            True,
            18.0,
        )

    async def test_a_client_leaving_before_the_first_delta_pays_the_prompt(self, upstream: Upstream) -> None:
        """The model accepted the request (its prompt is spent) but sent no text yet when the client
        left: 8 x 1.5 = 12.0 tokens are charged and an empty reply is saved, flagged truncated."""
        upstream.fake.plan(Behavior(pause_after=0))
        api, _config = await upstream.api(settings=upstream.settings(openai_read_timeout_s=PATIENT_S))
        chat = (await api.create_chat(10_000))["chat_id"]
        sent = asyncio.create_task(send(api, chat, stream=True))
        await upstream.fake.paused.wait()
        sent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sent
        await upstream.fake.disconnected.wait()
        await eventually(lambda: _reserved_is(upstream, chat, 0))
        assert (await upstream.meta(chat))["used"] == "12000"
        reply = (await api.call("GET", f"/chats/{chat}/messages/"))[1]["items"][1]
        assert (reply["content"], reply["truncated"], reply["tokens_charged"]) == ("", True, 12.0)

    async def test_a_client_leaving_a_production_server_pays_what_was_generated(
        self, upstream: Upstream
    ) -> None:
        """On a server that does not cancel handlers (`chatledger serve`), the departure is seen at
        the next write: what the upstream generated until then is charged, one token per delta, and
        saved truncated."""
        words = [" word"] * 2000
        upstream.fake.plan(Behavior(reply=words, pause_after=3))
        api, _config = await upstream.api(max_output_tokens=5000)
        chat = (await api.create_chat(100_000))["chat_id"]
        port = unused_port()
        runner = web.AppRunner(
            create_app(upstream.settings(), redis=upstream.redis), handler_cancellation=False
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with ClientSession() as session:
                response = await session.post(
                    f"http://127.0.0.1:{port}/chats/messages/",
                    data=msgspec.json.encode({"chat_id": chat, "content": CONTENT}),
                    headers={"X-API-Key": api.api_key, **STREAM_HEADERS},
                )
                seen = 0
                async for name, _data in events(response):
                    seen += name == "delta"
                    if seen == 3:
                        break
                response.close()
            upstream.fake.release.set()
            await eventually(lambda: _reserved_is(upstream, chat, 0))
        finally:
            await runner.cleanup()
        reply = (await api.call("GET", f"/chats/{chat}/messages/"))[1]["items"][1]
        generated = len(reply["content"].split())
        assert reply["truncated"] is True
        assert 3 <= generated < len(words)
        assert reply["tokens_charged"] == 8 * 1.5 + generated * 2.0
        assert (await upstream.meta(chat))["used"] == str(12_000 + generated * 2000)


async def _reserved_is(upstream: Upstream, chat: str, milli: int) -> bool:
    return (await upstream.meta(chat))["reserved"] == str(milli)


FAILS_BEFORE_THE_REPLY = [
    pytest.param(Behavior(status=500), 502, "upstream_error", 3, id="500"),
    pytest.param(Behavior(status=429), 502, "upstream_error", 3, id="429"),
    pytest.param(Behavior(status=401), 502, "upstream_error", 1, id="401"),
    pytest.param(Behavior(hang=True), 504, "upstream_timeout", 3, id="slow-first-byte"),
    pytest.param(Behavior(reply=[]), 502, "upstream_error", 1, id="empty"),
    pytest.param(None, 502, "upstream_error", 0, id="connection-refused"),
]

FAILS_MID_STREAM = [
    pytest.param(Behavior(cut_after=3), 3, 502, "upstream_error", id="cut-connection"),
    pytest.param(Behavior(error_after=2), 2, 502, "upstream_error", id="error-chunk"),
    pytest.param(Behavior(malformed=True), 1, 502, "upstream_error", id="malformed-chunk"),
    pytest.param(Behavior(pause_after=2), 2, 504, "upstream_timeout", id="stalled"),
]


class TestFailures:
    async def _chat_with_a_hold(self, upstream: Upstream, api: Api, config: ledger.ConfigRecord) -> str:
        """A chat with another request's hold open, so "reserved is back" means back to that hold."""
        chat: str = (await api.create_chat(1000))["chat_id"]
        other = ledger.Ledger(upstream.redis, KEYS)
        await other.start()
        await other.reserve(
            config, chat, prompt_tokens=5, completion_tokens_max=5, history_tokens_max=0, history_count_max=0
        )
        assert (await upstream.meta(chat))["reserved"] == "17500"
        return chat

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    @pytest.mark.parametrize(("behavior", "status", "code", "attempts"), FAILS_BEFORE_THE_REPLY)
    async def test_failures_before_the_reply_are_json_errors(
        self,
        upstream: Upstream,
        stream: bool,
        behavior: Behavior | None,
        status: int,
        code: str,
        attempts: int,
    ) -> None:
        """Errors, timeouts, refused connections and empty replies before any delta: 502/504 JSON with
        Retry-After (streamed or not), after bounded retries; nothing charged, nothing saved, and
        `reserved` back to the other request's hold."""
        settings = upstream.settings()
        if behavior is None:
            settings = upstream.settings(openai_base_url=f"http://127.0.0.1:{unused_port()}/v1")
        else:
            upstream.fake.default = behavior
        api, config = await upstream.api(settings=settings)
        chat = await self._chat_with_a_hold(upstream, api, config)
        answer, body, received = await send(api, chat, stream=stream)
        assert (answer, body["code"], received) == (status, code, [])
        assert len(upstream.fake.requests) == attempts
        meta = await upstream.meta(chat)
        assert (meta["used"], meta["reserved"]) == ("0", "17500")
        assert (await api.call("GET", f"/chats/{chat}/messages/"))[1]["total"] == 0

    @pytest.mark.parametrize(("behavior", "delivered", "status", "code"), FAILS_MID_STREAM)
    async def test_failures_mid_stream_end_with_an_error_event(
        self, upstream: Upstream, behavior: Behavior, delivered: int, status: int, code: str
    ) -> None:
        """A stream that breaks after k deltas ends with an `error` event in the JSON error shape; the
        client pays for what it received (8 x 1.5 + k x 2.0), and the partial reply is saved truncated."""
        upstream.fake.default = behavior
        api, config = await upstream.api()
        chat = await self._chat_with_a_hold(upstream, api, config)
        answer, _, received = await send(api, chat, stream=True)
        assert answer == 200
        names = [name for name, _ in received]
        assert names == ["delta"] * delivered + ["error"]
        assert received[-1][1]["code"] == code
        assert received[-1][1]["status"] == status
        assert received[-1][1]["detail"]
        assert len(upstream.fake.requests) == 1
        meta = await upstream.meta(chat)
        assert (meta["used"], meta["reserved"]) == (str(12_000 + delivered * 2000), "17500")
        history = (await api.call("GET", f"/chats/{chat}/messages/"))[1]
        assert history["total"] == 2
        reply = history["items"][1]
        assert (reply["content"], reply["truncated"], reply["tokens_charged"]) == (
            reply_of(received),
            True,
            12.0 + delivered * 2.0,
        )

    async def test_a_chat_deleted_mid_stream_ends_with_its_error(self, upstream: Upstream) -> None:
        """A chat deleted while its reply streams takes no message and no tokens: the stream ends with
        the 404 `chat_deleted` error event and the hold is released."""
        upstream.fake.plan(Behavior(pause_after=2))
        api, _config = await upstream.api(settings=upstream.settings(openai_read_timeout_s=PATIENT_S))
        chat = (await api.create_chat(1000))["chat_id"]
        sent = asyncio.create_task(send(api, chat, stream=True))
        await upstream.fake.paused.wait()
        assert (await api.call("DELETE", f"/chats/{chat}"))[0] == 200
        upstream.fake.release.set()
        status, _, received = await sent
        assert status == 200
        assert [name for name, _ in received] == ["delta"] * 10 + ["error"]
        assert (received[-1][1]["code"], received[-1][1]["status"]) == ("chat_deleted", 404)
        meta = await upstream.meta(chat)
        assert (meta["used"], meta["reserved"]) == ("0", "0")


class TestNeverReservesMoreThanTheChatCanPay:
    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_a_hostile_max_output_tokens_is_capped_by_the_balance(
        self, upstream: Upstream, stream: bool
    ) -> None:
        """A config asking for 10^9 reply tokens on a 100-token chat: the hold is the whole balance
        (8 x 1.5 + 44 x 2.0 = 100.0) and the upstream is told max_tokens = 44."""
        upstream.fake.plan(Behavior(hang=True))
        api, _config = await upstream.api(
            settings=upstream.settings(openai_read_timeout_s=PATIENT_S), max_output_tokens=10**9
        )
        chat = (await api.create_chat(100))["chat_id"]
        sent = asyncio.create_task(send(api, chat, stream=stream))
        await eventually(lambda: _has_requests(upstream.fake, 1))
        assert (await upstream.meta(chat))["reserved"] == "100000"
        assert upstream.fake.requests[0].body["max_tokens"] == 44
        upstream.fake.release.set()
        status, _, _ = await sent
        assert status == 200
        meta = await upstream.meta(chat)
        assert (meta["used"], meta["reserved"]) == ("41000", "0")

    async def test_a_huge_history_shrinks_the_reply_budget_then_answers_402(self, upstream: Upstream) -> None:
        """Each message of 100 tokens stays in the context; the hold prices it, so max_tokens falls
        from the config's 512 to what is left (200), and the message after that is refused with 402
        before any upstream call, with used never above the limit."""
        # One share: each hold may take everything free, so max_tokens is what the history leaves (with
        # more shares, a hold of this budget is a share of it: tests/integration/test_held_is_not_spent.py).
        settings = upstream.settings(history_tokens=100_000, history_messages=100, hold_shares=1)
        api, _config = await upstream.api(settings=settings)
        chat = (await api.create_chat(3000))["chat_id"]
        content = "word " * 100
        statuses = []
        for _ in range(6):
            statuses.append((await api.send(chat, content))[0])
        assert statuses == [200] * 5 + [402]
        assert [r.body["max_tokens"] for r in upstream.fake.requests] == [512, 512, 512, 512, 200]
        assert [len(r.body["messages"]) for r in upstream.fake.requests] == [2, 4, 6, 8, 10]
        meta = await upstream.meta(chat)
        assert int(meta["used"]) <= 3_000_000
        assert meta["reserved"] == "0"


async def _has_requests(fake: FakeOpenAI, count: int) -> bool:
    return len(fake.requests) >= count


class TestLogs:
    async def test_no_api_key_or_content_in_the_logs(self, upstream: Upstream) -> None:
        """Exchanges, retries, a left stream and a failure log neither the upstream's API key, nor the
        chat's API key, nor the message or the reply, at info or above."""
        upstream.fake.plan(Behavior(status=500), Behavior(), Behavior(pause_after=2), Behavior(cut_after=1))
        api, _config = await upstream.api(settings=upstream.settings(openai_read_timeout_s=PATIENT_S))
        chat = (await api.create_chat(10_000))["chat_id"]
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
            assert (await send(api, chat, stream=False))[0] == 200
            headers = {"X-API-Key": api.api_key, **STREAM_HEADERS}
            body = msgspec.json.encode({"chat_id": chat, "content": CONTENT})
            async with api.client.post("/chats/messages/", data=body, headers=headers) as response:
                await upstream.fake.paused.wait()
                response.close()
            await eventually(lambda: _reserved_is(upstream, chat, 0))
            assert (await send(api, chat, stream=True))[2][-1][0] == "error"
        events = {e["event"] for e in logged}
        assert {"upstream_retry", "stream_abandoned", "stream_failed"} <= events
        text = repr([e for e in logged if e["log_level"] != "debug"])
        for secret in ("sk-test-key", api.api_key, CONTENT, "quick brown"):
            assert secret not in text


class TestSettings:
    def test_the_openai_provider_needs_a_model(self) -> None:
        """CHATLEDGER_PROVIDER=openai without CHATLEDGER_OPENAI_MODEL fails at start, naming it."""
        settings = Settings(provider="openai")
        with pytest.raises(SettingsError, match="CHATLEDGER_OPENAI_MODEL"):
            provider_from_settings(settings)

    def test_settings_read_from_the_environment(self) -> None:
        """Every openai setting has its CHATLEDGER_OPENAI_* variable."""
        settings = settings_from_env(
            {
                "CHATLEDGER_PROVIDER": "openai",
                "CHATLEDGER_OPENAI_BASE_URL": "http://localhost:11434/v1",
                "CHATLEDGER_OPENAI_API_KEY": "sk-x",
                "CHATLEDGER_OPENAI_MODEL": "llama3",
                "CHATLEDGER_OPENAI_CONNECT_TIMEOUT_S": "1.5",
                "CHATLEDGER_OPENAI_READ_TIMEOUT_S": "20",
                "CHATLEDGER_OPENAI_TOTAL_TIMEOUT_S": "60",
                "CHATLEDGER_OPENAI_MAX_RETRIES": "0",
                "CHATLEDGER_OPENAI_RETRY_BACKOFF_S": "0.1",
            }
        )
        assert (settings.provider, settings.openai_model, settings.openai_max_retries) == (
            "openai",
            "llama3",
            0,
        )
        assert (settings.openai_connect_timeout_s, settings.openai_total_timeout_s) == (1.5, 60.0)
