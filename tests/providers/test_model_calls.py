"""Each config's share of a worker's model calls (service/model_calls.py), on a model server that hangs.

Config A's calls hang at the fake until the test releases them; past A's share, A's messages get 429
`model_calls_exceeded` with Retry-After at once and are charged nothing, while config B's message on the
same worker is answered as if A were not there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import Counter
from redis.asyncio import Redis

import ledger
from service.errors import ApiError
from service.model_calls import ModelCalls
from tests.http.conftest import Api, new_tenant
from tests.http.served import until
from tests.providers.fake_openai import Behavior, FakeOpenAI
from tests.providers.upstream import CONTENT, KEYS, PATIENT_S, Upstream, send

pytestmark = pytest.mark.redis


@pytest.fixture
async def upstream(
    aiohttp_client: Any, real_redis: Redis, keyspace: ledger.Keyspace, fake_openai: FakeOpenAI
) -> Upstream:
    return Upstream(real_redis, ledger.TenantStore(real_redis, keyspace), fake_openai, aiohttp_client)


async def _new_chat(api: Api) -> str:
    chat_id: str = (await api.create_chat())["chat_id"]
    return chat_id


async def _refused(api: Api, chat_id: str) -> tuple[int, dict[str, Any], str | None]:
    status, body, headers = await api.call(
        "POST", "/chats/messages/", json={"chat_id": chat_id, "content": CONTENT}
    )
    return status, body, headers.get("Retry-After")


class TestAConfigsShare:
    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    async def test_past_its_share_a_config_gets_429_and_another_config_is_answered(
        self, upstream: Upstream, stream: bool
    ) -> None:
        """A holds its 3 calls (hanging at the model); A's 4th and 5th get 429 at once, with nothing
        reserved or charged on their chat; B's message is answered while A's 3 still hang; once they
        end, A may call again."""
        api_a, _config_a = await upstream.api(model_calls_max=3)
        _config_b, key_b = await new_tenant(upstream.tenants)
        api_b = Api(api_a.client, key_b)
        upstream.fake.plan(*[Behavior(hang=True)] * 3)
        held = [await _new_chat(api_a) for _ in range(3)]
        calls = [asyncio.create_task(send(api_a, chat_id, stream=stream)) for chat_id in held]
        await until(lambda: len(upstream.fake.requests) == 3)

        spare = await _new_chat(api_a)
        journal_before = await upstream.redis.xlen(KEYS.chat_journal(spare))
        for _ in range(2):
            status, body, retry_after = await _refused(api_a, spare)
            assert (status, body["code"], body["limit"], retry_after) == (429, "model_calls_exceeded", 3, "1")
        meta = await upstream.meta(spare)
        assert (meta["used"], meta["reserved"]) == ("0", "0")
        assert await upstream.redis.xlen(KEYS.chat_journal(spare)) == journal_before

        status, _body, _events = await send(api_b, await _new_chat(api_b), stream=stream)
        assert status == 200
        assert not any(call.done() for call in calls)

        upstream.fake.release.set()
        assert [(await call)[0] for call in calls] == [200, 200, 200]
        assert (await send(api_a, spare, stream=stream))[0] == 200
        metrics = await (await api_a.client.get("/metrics")).text()
        assert "chatledger_model_calls_refused_total 2.0" in metrics

    async def test_a_config_without_a_share_takes_the_workers_default(self, upstream: Upstream) -> None:
        """model_calls_max 0 is CHATLEDGER_MODEL_CALLS_PER_CONFIG's share (2 here)."""
        api, config = await upstream.api(settings=upstream.settings(model_calls_per_config=2))
        assert config.model_calls_max == 0
        upstream.fake.plan(*[Behavior(hang=True)] * 2)
        calls = [asyncio.create_task(send(api, await _new_chat(api), stream=False)) for _ in range(2)]
        await until(lambda: len(upstream.fake.requests) == 2)
        status, body, _retry_after = await _refused(api, await _new_chat(api))
        assert (status, body["code"], body["limit"]) == (429, "model_calls_exceeded", 2)
        upstream.fake.release.set()
        assert [(await call)[0] for call in calls] == [200, 200]


class TestTheTable:
    def test_a_call_that_fails_gives_its_place_back_and_idle_configs_are_forgotten(self) -> None:
        calls = ModelCalls(1, Counter("refused_for_test", "refused", registry=None))
        config = ledger.ConfigRecord(config_id="c", agent_name="A", company_name="C")
        failed = False
        try:
            with calls.call(config):
                assert calls.running == {"c": 1}
                with pytest.raises(ApiError), calls.call(config):
                    pass
                raise RuntimeError("the model failed")
        except RuntimeError:
            failed = True
        assert failed
        assert calls.running == {}
        with calls.call(config):
            assert calls.running == {"c": 1}
        assert calls.running == {}


class TestThePool:
    async def test_a_call_that_finds_the_pool_full_fails_after_its_bounded_wait(
        self, upstream: Upstream
    ) -> None:
        """With 2 connections to the model server, both held by A's hanging calls, B's call waits at
        most the pool wait, then fails as the model not answering (504, no
        charge) instead of waiting for its exchange's deadline; A's calls end well once released."""
        settings = upstream.settings(
            openai_pool_size=2,
            openai_pool_wait_s=0.2,
            openai_connect_timeout_s=0.2,
            openai_max_retries=0,
            openai_read_timeout_s=PATIENT_S,
            openai_total_timeout_s=2 * PATIENT_S,
        )
        api_a, _config_a = await upstream.api(settings=settings)
        _config_b, key_b = await new_tenant(upstream.tenants)
        api_b = Api(api_a.client, key_b)
        upstream.fake.plan(*[Behavior(hang=True)] * 2)
        calls = [asyncio.create_task(send(api_a, await _new_chat(api_a), stream=False)) for _ in range(2)]
        await until(lambda: len(upstream.fake.requests) == 2)

        chat_b = await _new_chat(api_b)
        status, body, _events = await send(api_b, chat_b, stream=False)
        assert (status, body["code"]) == (504, "upstream_timeout")
        assert len(upstream.fake.requests) == 2  # B's call never reached the model
        meta = await upstream.meta(chat_b)
        assert (meta["used"], meta["reserved"]) == ("0", "0")

        upstream.fake.release.set()
        assert [(await call)[0] for call in calls] == [200, 200]
