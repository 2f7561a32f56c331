"""How a reserve gets its context (ledger/context.py): reserve.lua answers one shape in every
ContextMode, and the two ContextSources give the same context and price."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ledger import ConfigRecord, Keyspace, Ledger, RedisClient, TenantStore
from ledger.connection import PipelinedRedis
from ledger.context import CachedContext, ContextInReply, ReserveCall, context_source
from ledger.replies import decode_reserve
from ledger.scripts import ContextMode
from tests.integration.helpers import reserve, settle


def _call(ledger: Ledger, config: ConfigRecord, chat_id: str, count_max: int, hold: str) -> ReserveCall:
    """A reserve (its hold's id `hold`) of 1 prompt token and 1 reply token, with a context of up to
    `count_max` messages."""
    return ReserveCall(
        chat_id=chat_id,
        keys=ledger.keys.chat_keys(chat_id),
        config_id=config.config_id,
        reservation_id=hold,
        numbers=(1000, 1000, 1000, 1, 10_000, count_max, 60_000, 60_000, 60_000, 1),
        count_max=count_max,
        tokens_max=10_000,
    )


class TestReserveReplyShape:
    """reserve.lua answers the same nine elements whatever the mode; only IN_REPLY fills the entries."""

    @pytest.mark.parametrize("count_max", [0, 4])
    async def test_every_mode_answers_one_shape(
        self, ledger: Ledger, config: ConfigRecord, count_max: int
    ) -> None:
        """The same figures in every mode (a caller's pricing with no id it holds is not taken), the
        context's entries in the reply with IN_REPLY only."""
        chat = await ledger.create_chat(config, 10**9)
        for n in range(3):
            held = await reserve(ledger, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
            await settle(ledger, held, charge_milli=1, user=f"q{n}", reply=f"a{n}", user_tokens=n + 2)
        replies = {}
        for mode in ContextMode:
            call = _call(ledger, config, chat.chat_id, count_max, hold=f"hold-{mode}")
            raw = await ledger.scripts.call("reserve", keys=call.keys, args=call.args(mode))
            assert len(raw) == 9, mode
            replies[mode] = decode_reserve(raw)
        figures = {(g.granted_milli, g.prompt_milli, g.context_count, g.length) for g in replies.values()}
        assert len(figures) == 1
        ((_granted, prompt_milli, context_count, length),) = figures
        assert len({g.newest_id for g in replies.values()}) == 1
        assert (context_count, length) == ((4, 6) if count_max else (0, 0))
        # Newest first: a2 (1 token), q2 (4), a1 (1), q1 (3), then the prompt's token.
        assert prompt_milli == ((1 + 4 + 1 + 3 + 1) if count_max else 1) * 1000
        in_reply = replies[ContextMode.IN_REPLY].entries
        assert [entry[1][3] for entry in in_reply] == (["a2", "q2", "a1", "q1"] if count_max else [])
        for mode in (ContextMode.READ_BY_CALLER, ContextMode.PRICED_BY_CALLER):
            assert replies[mode].entries == []


class TestSources:
    """Each client gets the source it can serve in one round trip, and both answer alike."""

    async def test_the_source_follows_the_client(self, redis_client: RedisClient, keyspace: Keyspace) -> None:
        """A client of one node over TCP (ledger.connect) caches, over its multiplexer; the cluster and
        the embedded Redis, which have none, get the context in the script's reply."""
        source = Ledger(redis_client, keyspace).context
        one_node = isinstance(redis_client, PipelinedRedis)
        assert isinstance(source, CachedContext if one_node else ContextInReply)

    @pytest.mark.redis
    async def test_both_sources_give_the_same_context_and_price(
        self, real_redis: Redis, keyspace: Keyspace
    ) -> None:
        """On one chat, written by turns through either source, the two agree after every exchange."""
        config = await TenantStore(real_redis, keyspace).create_config(agent_name="A", company_name="C")
        cached = Ledger(real_redis, keyspace)
        in_reply = Ledger(real_redis, keyspace)
        in_reply.context = ContextInReply(in_reply.scripts)
        assert isinstance(context_source(cached.scripts), CachedContext)
        chat = await cached.create_chat(config, 10**9)
        for n in range(6):
            writer = (cached, in_reply)[n % 2]
            held = await reserve(writer, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
            await settle(writer, held, charge_milli=1, user=f"q{n}", reply=f"a{n}", user_tokens=n + 1)
            seen = []
            for reader in (cached, in_reply):
                got = await reserve(
                    reader, config, chat.chat_id, prompt_tokens=1, history_tokens_max=12, history_count_max=5
                )
                await reader.void(got)
                seen.append(([m.content for m in got.context], got.prompt_milli))
            assert seen[0] == seen[1], n
