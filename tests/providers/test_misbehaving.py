"""A model server that misbehaves, through the app on a real redis-server: what each exchange charges.

Every figure is exact (the weights and counts are in tests/providers/upstream.py): the prompt is 8
tokens by the service's estimator (8 x 1.5 = 12.0) and 14 by the fake's count (21.0); a reply token
costs 2.0; the fake's reply is 10 tokens. Each chat already carries another request's hold of 17.5
tokens, so "reserved is back" means back to exactly that, not merely to zero.

- Usage that cannot be true is charged as if there were none: 8 x 1.5 + 10 x 2.0 = 32.0, flagged 'e'.
- With a reply budget of 5 tokens the hold is 8 x 1.5 + 5 x 2.0 = 22.0: usage above max_tokens, or a
  reply that ignores max_tokens, is charged 22.0 at most, the excess recorded as clamped, and the
  reply the client gets is cut to 5 tokens.
- A model failing after k deltas reached a streamed client: 8 x 1.5 + k x 2.0, saved truncated.
- A failure before any of the reply reached the client: nothing charged, nothing saved.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.providers import Completion, CompletionRequest
from service.providers.offline import OfflineModel
from service.settings import Settings
from tests.http.conftest import Api, new_tenant
from tests.providers.fake_openai import DEFAULT_REPLY, DROP, Behavior, FakeOpenAI
from tests.providers.sse import Event, reply_of
from tests.providers.upstream import KEYS, PATIENT_S, WEIGHTS, Upstream, done_of, send

pytestmark = pytest.mark.redis

OTHER_HOLD_MILLI = 17_500
BUDGET = 5
# 8 x 1.5 + 5 x 2.0 tokens.
HOLD_MILLI = 12_000 + BUDGET * 2_000
# What the config's default reply budget (512) holds: 8 x 1.5 + 512 x 2.0 tokens.
DEFAULT_HOLD_MILLI = 12_000 + 512 * 2_000
FIRST_FIVE = "".join(DEFAULT_REPLY[:BUDGET])

STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


@pytest_asyncio.fixture
async def upstream(
    aiohttp_client: Any, real_redis: Redis, keyspace: ledger.Keyspace, fake_openai: FakeOpenAI
) -> Upstream:
    """The app and its tenants on the session's redis-server only."""
    return Upstream(real_redis, ledger.TenantStore(real_redis, keyspace), fake_openai, aiohttp_client)


class Books(msgspec.Struct, kw_only=True):
    """The ledger's account of one exchange on a chat with one other hold open."""

    used_milli: int
    reserved_milli: int
    clamped_milli: int
    # The exchange's own journal entries: its reserve, then its settle or void.
    hold_milli: int
    resolution: ledger.JournalEntry
    reconciles: bool
    # The saved reply, or None when nothing was saved.
    reply: ledger.StoredMessage | None


async def chat_with_a_hold(upstream: Upstream, api: Api, config: ledger.ConfigRecord, limit: float) -> str:
    """A chat with another request's hold of 17.5 tokens open."""
    chat: str = (await api.create_chat(limit))["chat_id"]
    other = ledger.Ledger(upstream.redis, KEYS)
    await other.start()
    await other.reserve(
        config, chat, prompt_tokens=5, completion_tokens_max=5, history_tokens_max=0, history_count_max=0
    )
    return chat


async def books(upstream: Upstream, chat: str) -> Books:
    book = ledger.Ledger(upstream.redis, KEYS)
    await book.start()
    journal = await book.read_journal(chat)
    # create, the other request's reserve, then this exchange's reserve and its resolution.
    assert [entry.op for entry in journal[:2]] == ["create", "reserve"], journal
    assert len(journal) == 4, journal
    reserve, resolution = journal[2:]
    assert reserve.op == "reserve"
    assert resolution.reservation_id == reserve.reservation_id
    state = await book.get_chat(None, chat)
    history = await book.read_history(None, chat, ledger.HistoryQuery(limit=10))
    return Books(
        used_milli=state.used_milli,
        reserved_milli=state.reserved_milli,
        clamped_milli=state.clamped_milli,
        hold_milli=reserve.reserved_delta_milli,
        resolution=resolution,
        reconciles=(await book.reconcile(chat)).ok,
        reply=history.items[1] if history.total else None,
    )


async def metric(api: Api, name: str, **labels: str) -> float:
    """A sample of the app's /metrics (0 when it was never counted)."""
    async with api.client.get("/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def charged_of(stream: bool, body: Any, received: list[Event]) -> float:
    """The exchange's charge as the client was told it."""
    charged: float = done_of(received)["tokens_charged"] if stream else body["tokens_charged"]
    return charged


def assert_settled(result: Books, *, charged_milli: int, hold_milli: int, flags: str, content: str) -> None:
    """The exchange settled `charged_milli`, gave back the rest of its hold and saved the reply."""
    assert result.hold_milli == hold_milli
    assert (result.resolution.op, result.resolution.used_delta_milli) == ("settle", charged_milli)
    assert result.resolution.reserved_delta_milli == -hold_milli
    assert (result.used_milli, result.reserved_milli) == (charged_milli, OTHER_HOLD_MILLI)
    assert result.reconciles
    assert result.reply is not None
    assert (result.reply.content, result.reply.flags, result.reply.charged_milli) == (
        content,
        flags,
        charged_milli,
    )


BAD_USAGE = [
    pytest.param({"prompt_tokens": -14}, id="negative"),
    pytest.param({"completion_tokens": 10**12}, id="huge"),
    pytest.param({"prompt_tokens": 14.5}, id="float"),
    pytest.param({"completion_tokens": 10.0}, id="whole-float"),
    pytest.param({"completion_tokens": "10"}, id="string"),
    pytest.param({"prompt_tokens": True}, id="boolean"),
    pytest.param({"completion_tokens": 0}, id="zero"),
    pytest.param({"prompt_tokens": DROP}, id="missing-field"),
    pytest.param("lots", id="not-an-object"),
]


class TestUsageThatCannotBeTrue:
    @STREAMED
    @pytest.mark.parametrize("usage", BAD_USAGE)
    async def test_is_charged_as_missing(self, upstream: Upstream, stream: bool, usage: Any) -> None:
        """Negative, huge, fractional, string, boolean, zero or incomplete usage is never a 500: the
        reply is counted by the estimator (32.0), flagged 'e', the hold resolved, and the rejection
        counted in chatledger_upstream_faults."""
        if isinstance(usage, dict):
            upstream.fake.default = Behavior(usage_patch=usage)
        else:
            upstream.fake.default = Behavior(usage_as=usage)
        api, config = await upstream.api()
        chat = await chat_with_a_hold(upstream, api, config, 10_000)
        status, body, received = await send(api, chat, stream=stream)
        assert status == 200
        assert charged_of(stream, body, received) == 32.0
        if stream:
            assert [name for name, _ in received] == ["delta"] * 10 + ["done"]
            assert done_of(received)["estimated"] is True
        assert_settled(
            await books(upstream, chat),
            charged_milli=32_000,
            hold_milli=DEFAULT_HOLD_MILLI,
            flags="e",
            content="".join(DEFAULT_REPLY),
        )
        faults = await metric(
            api, "chatledger_upstream_faults_total", provider="openai", kind="usage_rejected"
        )
        assert faults == 1.0


class TestTheHoldIsTheMostAnExchangeCosts:
    @STREAMED
    async def test_usage_above_max_tokens_is_clamped_to_the_hold(
        self, upstream: Upstream, stream: bool
    ) -> None:
        """A model that stops at max_tokens = 5 but reports 100,000 completion tokens costs
        14 x 1.5 + 100,000 x 2.0 = 200,021.0 by its usage: it is charged the hold, 22.0, and the
        other 199,999.0 are recorded as clamped on the message ('s'), the chat, the journal and the
        metric."""
        upstream.fake.default = Behavior(usage_patch={"completion_tokens": 100_000})
        api, config = await upstream.api(max_output_tokens=BUDGET)
        chat = await chat_with_a_hold(upstream, api, config, 10_000)
        status, body, received = await send(api, chat, stream=stream)
        assert status == 200
        assert upstream.fake.requests[0].body["max_tokens"] == BUDGET
        assert charged_of(stream, body, received) == 22.0
        result = await books(upstream, chat)
        assert_settled(
            result, charged_milli=HOLD_MILLI, hold_milli=HOLD_MILLI, flags="ts", content=FIRST_FIVE
        )
        assert result.clamped_milli == result.resolution.clamped_milli == 199_999_000
        assert await metric(api, "chatledger_tokens_clamped_total") == 199_999.0

    async def test_a_stream_that_ignores_max_tokens_is_cut_at_the_budget(self, upstream: Upstream) -> None:
        """A model that goes on past max_tokens = 5: the client gets 5 deltas and the normal `done`
        event, the upstream request is closed at the sixth, and 8 x 1.5 + 5 x 2.0 = 22.0 (the hold)
        is charged for the reply saved truncated."""
        # It pauses after its sixth chunk, so the close is what ends its request.
        upstream.fake.default = Behavior(ignore_max_tokens=True, pause_after=BUDGET + 1)
        api, config = await upstream.api(max_output_tokens=BUDGET)
        chat = await chat_with_a_hold(upstream, api, config, 10_000)
        status, _, received = await send(api, chat, stream=True)
        assert status == 200
        assert [name for name, _ in received] == ["delta"] * BUDGET + ["done"]
        assert reply_of(received) == FIRST_FIVE
        assert (done_of(received)["tokens_charged"], done_of(received)["estimated"]) == (22.0, True)
        await upstream.fake.disconnected.wait()
        assert_settled(
            await books(upstream, chat),
            charged_milli=HOLD_MILLI,
            hold_milli=HOLD_MILLI,
            flags="te",
            content=FIRST_FIVE,
        )
        assert (
            await metric(api, "chatledger_upstream_faults_total", provider="openai", kind="over_budget") == 1
        )

    async def test_a_whole_reply_that_ignores_max_tokens_is_cut_to_the_budget(
        self, upstream: Upstream
    ) -> None:
        """A whole reply of 10 tokens to max_tokens = 5 is cut to its first 5 tokens by the provider's
        counter and flagged truncated; its honest usage (14 x 1.5 + 10 x 2.0 = 41.0) is charged the
        hold, 22.0, and the other 19.0 are clamped."""
        upstream.fake.default = Behavior(ignore_max_tokens=True)
        api, config = await upstream.api(max_output_tokens=BUDGET)
        chat = await chat_with_a_hold(upstream, api, config, 10_000)
        status, body, _ = await send(api, chat, stream=False)
        assert status == 200
        assert (body["content"], body["truncated"], body["tokens_charged"]) == (FIRST_FIVE, True, 22.0)
        result = await books(upstream, chat)
        assert_settled(
            result, charged_milli=HOLD_MILLI, hold_milli=HOLD_MILLI, flags="ts", content=FIRST_FIVE
        )
        assert result.clamped_milli == 19_000

    @STREAMED
    async def test_a_long_reply_to_a_small_chat_is_cut_to_what_it_can_pay(
        self, upstream: Upstream, stream: bool
    ) -> None:
        """2,000 tokens to a 117.5-token chat whose config asks for 10^9 reply tokens: the hold is the
        100.0 tokens left (max_tokens 44) and the client gets 44 tokens of the reply, for 100.0."""
        words = [" word"] * 2000
        upstream.fake.default = Behavior(reply=words, ignore_max_tokens=True)
        api, config = await upstream.api(max_output_tokens=10**9)
        chat = await chat_with_a_hold(upstream, api, config, 117.5)
        status, body, received = await send(api, chat, stream=stream)
        assert status == 200
        assert upstream.fake.requests[0].body["max_tokens"] == 44
        content = reply_of(received) if stream else body["content"]
        assert content == "".join(words[:44])
        assert charged_of(stream, body, received) == 100.0
        result = await books(upstream, chat)
        assert_settled(
            result,
            charged_milli=100_000,
            hold_milli=100_000,
            flags="te" if stream else "ts",
            content=content,
        )
        assert result.used_milli + result.reserved_milli == 117_500


FAILS_AFTER_K = [
    pytest.param(Behavior(cut_after=3), {}, 3, 502, "upstream_error", id="dropped"),
    pytest.param(Behavior(error_after=2), {}, 2, 502, "upstream_error", id="error-chunk"),
    pytest.param(Behavior(pause_after=2), {}, 2, 504, "upstream_timeout", id="stalled"),
    pytest.param(
        Behavior(pause_after=4),
        {"openai_read_timeout_s": PATIENT_S, "openai_total_timeout_s": 1.0},
        4,
        504,
        "upstream_timeout",
        id="past-the-deadline",
    ),
]


class TestAModelFailingMidReply:
    @pytest.mark.parametrize(("behavior", "settings", "k", "status", "code"), FAILS_AFTER_K)
    async def test_a_stream_pays_for_the_deltas_delivered(
        self,
        upstream: Upstream,
        behavior: Behavior,
        settings: dict[str, Any],
        k: int,
        status: int,
        code: str,
    ) -> None:
        """After k deltas reached the client, a dropped connection, an error chunk, a stall or the
        exchange's deadline settles 8 x 1.5 + k x 2.0, saves the k deltas flagged truncated, and
        ends the stream with its `error` event."""
        upstream.fake.default = behavior
        api, config = await upstream.api(settings=upstream.settings(**settings))
        chat = await chat_with_a_hold(upstream, api, config, 10_000)
        answer, _, received = await send(api, chat, stream=True)
        assert answer == 200
        assert [name for name, _ in received] == ["delta"] * k + ["error"]
        assert (received[-1][1]["status"], received[-1][1]["code"]) == (status, code)
        assert reply_of(received) == "".join(DEFAULT_REPLY[:k])
        assert_settled(
            await books(upstream, chat),
            charged_milli=12_000 + k * 2_000,
            hold_milli=DEFAULT_HOLD_MILLI,
            flags="te",
            content=reply_of(received),
        )

    @pytest.mark.parametrize(("behavior", "settings", "k", "status", "code"), FAILS_AFTER_K)
    async def test_a_whole_answer_that_breaks_charges_nothing(
        self,
        upstream: Upstream,
        behavior: Behavior,
        settings: dict[str, Any],
        k: int,
        status: int,
        code: str,
    ) -> None:
        """The same failures of a whole answer (the body cut, an error object, a stall mid-body, the
        deadline): nothing reached the client, so 502/504 JSON, nothing charged or saved, the hold
        voided."""
        upstream.fake.default = behavior
        api, config = await upstream.api(settings=upstream.settings(**settings))
        chat = await chat_with_a_hold(upstream, api, config, 10_000)
        answer, body, received = await send(api, chat, stream=False)
        assert (answer, body["code"], received) == (status, code, [])
        assert_voided(await books(upstream, chat))

    @pytest.mark.parametrize(
        ("behavior", "status", "code"),
        [
            pytest.param(Behavior(cut_after=0), 502, "upstream_error", id="dropped"),
            pytest.param(Behavior(error_after=0), 502, "upstream_error", id="error-chunk"),
            pytest.param(Behavior(pause_after=0), 504, "upstream_timeout", id="stalled"),
        ],
    )
    async def test_a_stream_failing_before_its_first_delta_charges_nothing(
        self, upstream: Upstream, behavior: Behavior, status: int, code: str
    ) -> None:
        """With no delta delivered, a stream's failure is still a 502/504 JSON error and voids."""
        upstream.fake.default = behavior
        api, config = await upstream.api()
        chat = await chat_with_a_hold(upstream, api, config, 10_000)
        answer, body, received = await send(api, chat, stream=True)
        assert (answer, body["code"], received) == (status, code, [])
        assert_voided(await books(upstream, chat))


def assert_voided(result: Books) -> None:
    assert result.hold_milli == DEFAULT_HOLD_MILLI
    assert (result.resolution.op, result.resolution.used_delta_milli) == ("void", 0)
    assert result.resolution.reserved_delta_milli == -DEFAULT_HOLD_MILLI
    assert (result.used_milli, result.reserved_milli, result.reply) == (0, OTHER_HOLD_MILLI, None)
    assert result.reconciles


class NegativeCounts(OfflineModel):
    """A provider with a bug: its whole replies report -5 completion tokens."""

    async def complete(self, request: CompletionRequest) -> Completion:
        return msgspec.structs.replace(await super().complete(request), completion_tokens=-5)


class TestTheHoldIsAlwaysResolved:
    async def test_a_settle_that_fails_on_a_bug_voids_the_hold(
        self, aiohttp_client: Any, real_redis: Redis, keyspace: ledger.Keyspace
    ) -> None:
        """A charge the ledger cannot take (a provider's bug, not a ledger outcome) is a 500, and the
        hold is voided before it: reserved is back to the other hold and the journal reconciles."""
        settings = Settings(redis_url="redis://unused", key_prefix="cltest", auth_cache_ttl_s=0)
        config, key = await new_tenant(ledger.TenantStore(real_redis, keyspace), **WEIGHTS)
        app = create_app(settings, redis=real_redis, provider=NegativeCounts())
        api = Api(await aiohttp_client(app), key)
        upstream = Upstream(real_redis, ledger.TenantStore(real_redis, keyspace), FakeOpenAI(), None)
        chat = await chat_with_a_hold(upstream, api, config, 1000)
        status, body, _ = await api.call("POST", "/chats/messages/", json={"chat_id": chat, "content": "hi"})
        assert (status, body["code"]) == (500, "internal_error")
        result = await books(upstream, chat)
        assert (result.resolution.op, result.resolution.reserved_delta_milli) == ("void", -result.hold_milli)
        assert (result.used_milli, result.reserved_milli, result.reply) == (0, OTHER_HOLD_MILLI, None)
        assert result.reconciles
