"""Whatever a model server does, the books stay right: Hypothesis draws its behaviour per exchange.

Each example is a fresh config (its reply budget drawn) and a chat (its limit drawn) carrying another
request's hold, then a few exchanges, streamed or not, each against a drawn upstream: good or broken
usage, max_tokens honoured or not, a dropped connection, an error chunk or a stall after k chunks, an
HTTP error. After every exchange, on a real redis-server: `reserved` is back to its value before, `used`
grew by at most the exchange's hold, the journal reconciles, no answer is a 500, the client never got
more reply than the budget, and a stream that broke after k deltas cost exactly its prompt (by the
service's estimator) plus k tokens, capped by the hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

import ledger
from service.app import create_app
from service.providers.openai import estimate_tokens
from tests.http.conftest import Api, new_tenant
from tests.providers.fake_openai import DROP, Behavior, FakeOpenAI
from tests.providers.sse import Event, reply_of
from tests.providers.upstream import KEYS, SYSTEM, WEIGHTS, Upstream, send
from tests.redis_servers import RedisServer, flush_all

pytestmark = [pytest.mark.redis, pytest.mark.slow]

T = TypeVar("T")

# Short, so that the drawn stalls cost little; a spurious timeout on a loaded machine only changes
# which outcome an exchange has, and every check below holds for every outcome.
READ_TIMEOUT_S = 0.1
OTHER_HOLD_MILLI = 17_500

WORDS = [" word", " fox", ".", " internationalization", " 42", " é"]
usage_values = st.one_of(
    st.integers(min_value=1, max_value=10**6),  # a count that can be true, if not always right
    st.integers(min_value=-5, max_value=10**13),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.just(DROP),
)


@st.composite
def behaviours(draw: st.DrawFn) -> Behavior:
    """A good answer half the time; otherwise one failure, after k chunks."""
    failure = draw(st.sampled_from([None, None, None, "cut_after", "error_after", "pause_after", "status"]))
    broken: dict[str, Any] = {}
    if failure == "status":
        broken["status"] = 500
    elif failure is not None:
        broken[failure] = draw(st.integers(min_value=0, max_value=30))
    return Behavior(
        reply=draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=30)),
        usage=draw(st.booleans()),
        usage_patch=draw(
            st.none()
            | st.dictionaries(
                st.sampled_from(["prompt_tokens", "completion_tokens"]), usage_values, max_size=2
            )
        ),
        usage_as=draw(st.sampled_from([msgspec.UNSET, msgspec.UNSET, "lots", [1, 2]])),
        ignore_max_tokens=draw(st.booleans()),
        **broken,
    )


exchanges = st.lists(st.tuples(behaviours(), st.booleans()), min_size=1, max_size=4)


class Harness:
    """One event loop, one fake upstream and one app for the whole run; a fresh chat per example."""

    def __init__(
        self, redis: Redis, fake: FakeOpenAI, client: TestClient[web.Request, web.Application]
    ) -> None:
        self.redis = redis
        self.fake = fake
        self.client = client
        self.ledger = ledger.Ledger(redis, KEYS)

    async def start(self) -> None:
        await self.ledger.start()

    async def exchange_checked(self, api: Api, chat: str, behaviour: Behavior, stream: bool) -> None:
        """One exchange against `behaviour`, then every check of the module docstring."""
        self.fake.default = behaviour
        self.fake.requests.clear()
        before = await self.ledger.get_chat(None, chat)
        journal_before = len(await self.ledger.read_journal(chat, count=1000))
        status, _body, received = await send(api, chat, stream=stream)
        after = await self.ledger.get_chat(None, chat)
        moves = (await self.ledger.read_journal(chat, count=1000))[journal_before:]
        # 429 `tokens_held`: the chat could pay, but the other hold has the tokens (held is not spent).
        assert status in (200, 402, 429, 502, 504), (status, _body)
        assert after.reserved_milli == before.reserved_milli == OTHER_HOLD_MILLI
        assert (await self.ledger.reconcile(chat)).ok
        charged = after.used_milli - before.used_milli
        if not moves:  # 402 or 429: refused before any hold
            assert (status in (402, 429), charged) == (True, 0), (status, _body)
            if status == 429:
                assert _body["code"] == "tokens_held"
                assert _body["token_limit"] - _body["token_used"] >= _body["tokens_needed"]
            return
        reserve, resolution = moves
        assert (reserve.op, resolution.op) in {("reserve", "settle"), ("reserve", "void")}, moves
        assert 0 <= charged == resolution.used_delta_milli <= reserve.reserved_delta_milli
        if resolution.op == "void":
            assert charged == 0
            assert not any(name == "delta" for name, _ in received)
        await self._check_reply(status, received, charged, reserve.reserved_delta_milli, chat)

    async def _check_reply(
        self, status: int, received: list[Event], charged: int, hold: int, chat: str
    ) -> None:
        """The client got at most the reply budget; a broken stream cost its prompt plus its deltas."""
        if status != 200 or not self.fake.requests:
            return
        request = self.fake.requests[-1].body
        max_tokens: int = request["max_tokens"]
        deltas = sum(name == "delta" for name, _ in received)
        if received:
            assert deltas <= max_tokens
        else:
            # A whole reply is within the budget by the model's count when its usage is trusted; when
            # the service counted it ('e'), by the service's count.
            reply = (await self.ledger.read_history(None, chat, ledger.HistoryQuery(limit=100))).items[-1]
            if "e" in reply.flags:
                assert estimate_tokens(reply.content) <= max_tokens
        if received and received[-1][0] == "error":
            prompt = sum(estimate_tokens(message["content"]) for message in request["messages"])
            assert charged == min(prompt * 1500 + deltas * 2000, hold), (prompt, deltas, reply_of(received))


@asynccontextmanager
async def harness(url: str) -> AsyncIterator[Harness]:
    fake = FakeOpenAI()
    fake_server = TestServer(fake.app)
    await fake_server.start_server()
    fake.base_url = str(fake_server.make_url("/v1"))
    redis = ledger.connect(url)
    await flush_all(redis)
    upstream = Upstream(redis, ledger.TenantStore(redis, KEYS), fake, None)
    settings_ = upstream.settings(openai_read_timeout_s=READ_TIMEOUT_S)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(settings_, redis=redis))
    )
    await client.start_server()
    try:
        checks = Harness(redis, fake, client)
        await checks.start()
        yield checks
    finally:
        fake.release.set()
        await client.close()
        await fake_server.close()
        await redis.aclose()


class TestAnyUpstreamBehaviour:
    def test_the_books_stay_right_after_every_exchange(self, redis_server: RedisServer) -> None:
        """Drawn upstream behaviours, streamed or not, on drawn budgets: the hold is resolved after every
        exchange, no exchange costs more than its hold, and the journal always reconciles."""
        loop = asyncio.new_event_loop()

        def run(awaitable: Awaitable[T]) -> T:
            return loop.run_until_complete(awaitable)

        context = harness(redis_server.url)
        checks = run(context.__aenter__())
        try:

            @settings(
                max_examples=60,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(
                budget=st.sampled_from([1, 5, 50, 512]),
                limit=st.sampled_from([20.0, 60.0, 1000.0]),
                steps=exchanges,
            )
            def example(budget: int, limit: float, steps: list[tuple[Behavior, bool]]) -> None:
                run(self._example(checks, budget, limit, steps))

            example()
        finally:
            run(context.__aexit__(None, None, None))
            loop.close()

    async def _example(
        self, checks: Harness, budget: int, limit: float, steps: list[tuple[Behavior, bool]]
    ) -> None:
        tenants = ledger.TenantStore(checks.redis, KEYS)
        config, key = await new_tenant(tenants, system_prompt=SYSTEM, max_output_tokens=budget, **WEIGHTS)
        api = Api(checks.client, key)
        chat: str = (await api.create_chat(limit + OTHER_HOLD_MILLI / 1000))["chat_id"]
        await checks.ledger.reserve(
            config, chat, prompt_tokens=5, completion_tokens_max=5, history_tokens_max=0, history_count_max=0
        )
        for behaviour, stream in steps:
            await checks.exchange_checked(api, chat, behaviour, stream)
