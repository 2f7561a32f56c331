"""Each worker's cache of a chat's newest messages: the context it gives is the one the stream would give,
and it stays bounded.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from ledger import ConfigRecord, Keyspace, Ledger, RedisClient, TenantStore
from ledger.context import SHARED_RESERVES, ContextCache
from ledger.history import make_message
from tests.integration.helpers import numbered_exchanges, reserve, settle, voided_context


async def _newest(ledger: Ledger, config: ConfigRecord, chat_id: str, count: int = 6) -> list[str]:
    return [m.content for m in (await voided_context(ledger, config, chat_id, count)).context]


async def _newest_id(redis_client: RedisClient, messages_key: str) -> str:
    """The stream id of a chat's newest message."""
    newest = await redis_client.xrevrange(messages_key, count=1)
    assert newest, "the chat has messages"
    return str(newest[0][0])


class TestContextCache:
    """A worker keeps its chats' newest messages and reads only what is new (ledger/context.py); what
    a reserve sees must not depend on it."""

    async def test_messages_other_workers_add_are_seen(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """Two workers take turns on a chat: each context is the stream's newest messages, the same
        as a worker with nothing cached reads."""
        other = Ledger(redis_client, ledger.keys)
        chat = await ledger.create_chat(config, 10**12)
        for n in range(12):
            worker = (ledger, other)[n % 2]
            await numbered_exchanges(worker, config, chat.chat_id, 1 + n % 3)
            fresh = Ledger(redis_client, ledger.keys)
            expected = await _newest(fresh, config, chat.chat_id, count=5)
            assert await _newest(ledger, config, chat.chat_id, count=5) == expected
            assert await _newest(other, config, chat.chat_id, count=5) == expected

    async def test_a_bigger_context_than_cached_is_read_whole(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A cache of the newest 2 messages cannot make the newest 6: those are read again."""
        chat = await ledger.create_chat(config, 10**12)
        await numbered_exchanges(ledger, config, chat.chat_id, 4)
        assert await _newest(ledger, config, chat.chat_id, count=2) == ["q3", "a3"]
        await numbered_exchanges(ledger, config, chat.chat_id, 1)
        assert await _newest(ledger, config, chat.chat_id, count=6) == ["q2", "a2", "q3", "a3", "q0", "a0"]

    @pytest.mark.parametrize("exchanges", [3, 2], ids=["longer-than-now", "as-long-as-now"])
    async def test_a_recreated_history_is_read_again(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient, exchanges: int
    ) -> None:
        """A history that is not the one cached (emptied and written again, as after a data loss) fails
        the check and is read whole: no cached message leaks into the context, whether the cache was
        longer than the new history or as long (then only the newest id tells them apart). The cache
        came from this worker's own settles, so on a multiplexed client its reserves are sent without
        the transaction, and the reply's length and newest id are what show the cache is not the
        chat's (ledger/context.py)."""
        chat = await ledger.create_chat(config, 10**12)
        await numbered_exchanges(ledger, config, chat.chat_id, exchanges)
        assert (
            await _newest(ledger, config, chat.chat_id)
            == ["q0", "a0", "q1", "a1", "q2", "a2"][: 2 * exchanges]
        )
        keys = ledger.keys
        cached_id = await _newest_id(redis_client, keys.chat_messages(chat.chat_id))
        await redis_client.delete(keys.chat_messages(chat.chat_id), keys.chat_context_tokens(chat.chat_id))
        await redis_client.hdel(keys.chat_meta(chat.chat_id), "ctxlen", "last")
        # A real data loss (a failover, a restart) takes far longer than a millisecond, and the entries
        # written after it take their time part from the store's clock then: an id at a reused position
        # is never the lost one's. Written back within the same millisecond, as a fast run here could,
        # the recreated history would carry the cached ids themselves, which its length and newest id
        # cannot tell from the cache.
        # Every backend here runs on this machine's clock, so the rewrite waits until it is past the
        # cached newest id's millisecond (a millisecond more, for the event loop's own clock).
        cached_ms = int(cached_id.split("-")[1])
        await asyncio.sleep(max((cached_ms + 1) / 1000 - time.time(), 0) + 0.001)
        other = Ledger(redis_client, keys)
        for n in range(2):
            held = await reserve(other, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
            await settle(other, held, charge_milli=1, user=f"new q{n}", reply=f"new a{n}")
        recreated_id = await _newest_id(redis_client, keys.chat_messages(chat.chat_id))
        # The newest id differs in its time part alone when the histories are as long.
        assert recreated_id != cached_id
        assert (recreated_id.split("-")[0] == cached_id.split("-")[0]) == (exchanges == 2)
        expected = ["new q0", "new a0", "new q1", "new a1"]
        assert await _newest(ledger, config, chat.chat_id) == expected
        assert await _newest(ledger, config, chat.chat_id) == expected


@pytest.mark.redis
class TestCurrentCache:
    """A worker's own settle adds the pair to its cache, so its next reserve of the chat prices the
    context itself; the script checks that the cache is still the newest."""

    async def test_a_current_cache_prices_the_context_in_the_worker(
        self, real_redis: Redis, keyspace: Keyspace
    ) -> None:
        """Counted by Redis itself (INFO commandstats), on a real redis-server: the multiplexer that
        makes the cache worth having exists for single-node TCP clients only."""
        ledger = Ledger(real_redis, keyspace)
        config = await TenantStore(real_redis, keyspace).create_config(agent_name="A", company_name="C")
        chat = await ledger.create_chat(config, 10**12)
        await numbered_exchanges(ledger, config, chat.chat_id, 3)
        await _newest(ledger, config, chat.chat_id)
        await numbered_exchanges(ledger, config, chat.chat_id, 1)
        before = await real_redis.info("commandstats")
        held = await reserve(
            ledger, config, chat.chat_id, prompt_tokens=1, history_tokens_max=10_000, history_count_max=6
        )
        after = await real_redis.info("commandstats")

        def calls(name: str) -> int:
            return int(after.get(f"cmdstat_{name}", {}).get("calls", 0)) - int(
                before.get(f"cmdstat_{name}", {}).get("calls", 0)
            )

        # The script read no token counts: the worker priced the context from its cache.
        assert (calls("evalsha"), calls("getrange")) == (1, 0)
        assert [m.content for m in held.context] == ["q1", "a1", "q2", "a2", "q0", "a0"]
        fresh = Ledger(real_redis, keyspace)
        await ledger.void(held)
        expected = await voided_context(fresh, config, chat.chat_id)
        assert held.prompt_milli == expected.prompt_milli == (1 + 2 + 1 + 3 + 1 + 1 + 1) * 1000

    async def test_the_cache_prices_as_the_script_does(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """Under every token and count bound (the newest messages that fit, stopping at the first that
        does not), a worker pricing its cache and a worker with nothing cached agree."""
        chat = await ledger.create_chat(config, 10**12)
        await numbered_exchanges(ledger, config, chat.chat_id, 6)
        for tokens_max in (0, 1, 2, 5, 9, 10, 30, 10_000):
            for count_max in (1, 2, 5, 12, 40):
                await numbered_exchanges(ledger, config, chat.chat_id, 1)
                fresh = Ledger(redis_client, ledger.keys)
                seen = []
                for worker in (ledger, fresh, ledger):
                    held = await reserve(
                        worker,
                        config,
                        chat.chat_id,
                        prompt_tokens=1,
                        history_tokens_max=tokens_max,
                        history_count_max=count_max,
                    )
                    await worker.void(held)
                    seen.append(([m.content for m in held.context], held.prompt_milli))
                assert seen[0] == seen[1] == seen[2], (tokens_max, count_max)

    async def test_a_pair_another_worker_added_is_not_taken_for_current(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """Another worker's settle moves the chat past this worker's cache: its pricing is refused,
        the script prices the chat, the worker reads the new pair, and the context includes it."""
        other = Ledger(redis_client, ledger.keys)
        chat = await ledger.create_chat(config, 10**12)
        await numbered_exchanges(ledger, config, chat.chat_id, 2)
        assert await _newest(ledger, config, chat.chat_id, count=4) == ["q0", "a0", "q1", "a1"]
        held = await reserve(other, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(other, held, charge_milli=1, user="other q", reply="other a", user_tokens=50)
        held = await voided_context(ledger, config, chat.chat_id, count=4)
        assert [m.content for m in held.context] == ["q1", "a1", "other q", "other a"]
        assert held.prompt_milli == (1 + 2 + 1 + 50 + 1) * 1000


@pytest.mark.redis
class TestChatAlone:
    """A chat that only this worker wrote since it cached it is reserved with the script alone; a chat
    another worker writes too gets the transaction that reads its entries (ledger/context.py)."""

    async def test_the_transaction_is_kept_for_shared_chats(
        self, real_redis: Redis, keyspace: Keyspace
    ) -> None:
        """Counted by Redis itself (INFO commandstats): the commands each reserve sent, and the context
        it got, as one worker alone, then with another worker writing to the chat, then alone again."""
        ledger = Ledger(real_redis, keyspace)
        other = Ledger(real_redis, keyspace)
        config = await TenantStore(real_redis, keyspace).create_config(agent_name="A", company_name="C")
        chat = await ledger.create_chat(config, 10**12)
        await numbered_exchanges(ledger, config, chat.chat_id, 2)

        async def sent(count: int = 4) -> tuple[dict[str, int], list[str]]:
            before = await real_redis.info("commandstats")
            held = await reserve(
                ledger, config, chat.chat_id, prompt_tokens=1, history_tokens_max=10_000,
                history_count_max=count,
            )  # fmt: skip
            after = await real_redis.info("commandstats")
            await ledger.void(held)
            calls = {
                name: int(after.get(f"cmdstat_{name}", {}).get("calls", 0))
                - int(before.get(f"cmdstat_{name}", {}).get("calls", 0))
                for name in ("evalsha", "multi", "exec", "xrevrange")
            }
            return calls, [m.content for m in held.context]

        alone = {"evalsha": 1, "multi": 0, "exec": 0, "xrevrange": 0}
        in_transaction = {"evalsha": 1, "multi": 1, "exec": 1, "xrevrange": 1}
        # The first reserve reads the chat whole (nothing cached); this worker's settles keep it
        # current, and its reserves are the script alone.
        assert (await sent())[0] == in_transaction
        await numbered_exchanges(ledger, config, chat.chat_id, 1)  # "q0", "a0" again: the newest now
        assert await sent() == (alone, ["q1", "a1", "q0", "a0"])
        # Another worker's pair: the script alone, then the read of what it lacked, one round trip more.
        held = await reserve(other, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(other, held, charge_milli=1, user="other q", reply="other a", user_tokens=50)
        assert await sent() == ({**alone, "xrevrange": 1}, ["q0", "a0", "other q", "other a"])
        # Shared now: the transaction, until SHARED_RESERVES reserves in a row found nothing new.
        for _ in range(SHARED_RESERVES):
            assert await sent() == (in_transaction, ["q0", "a0", "other q", "other a"])
        assert await sent() == (alone, ["q0", "a0", "other q", "other a"])
        # Another write by the other worker starts the count again.
        held = await reserve(other, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(other, held, charge_milli=1, user="q9", reply="a9")
        assert (await sent())[0] == {**alone, "xrevrange": 1}
        assert (await sent())[0] == in_transaction


class TestContextCacheBounds:
    def test_least_recently_used_chats_go_first(self) -> None:
        """Beyond its bound in chats or in characters, the cache drops the chats used longest ago."""
        cache = ContextCache(chats_max=2, chars_max=10)
        entry: list[list[object]] = [["1-0", ["u", "1", "c", "abcd", "t", "1", "m", "0", "f", ""]]]
        longer: list[list[object]] = [["2-0", ["u", "1", "c", "x" * 9, "t", "1", "m", "0", "f", ""]]]
        for chat in ("a", "b"):
            cache.remember(chat, entry, length=1, count=5)
        cache.plan("a", "msgs", 5)
        cache.remember("a", entry, length=1, count=5)
        cache.remember("c", entry, length=1, count=5)
        assert [cache.plan(chat, "msgs", 5).base is not None for chat in "abc"] == [True, False, True]
        cache.remember("d", longer, length=1, count=5)
        # 4 + 9 characters pass the bound of 10: only the newest chat stays.
        assert [cache.plan(chat, "msgs", 5).base is not None for chat in "acd"] == [False, False, True]

    def test_a_merge_with_nothing_new_keeps_the_chat_recent(self) -> None:
        """A reserve whose read found nothing new returns the cached messages, counts as a use of the
        chat (the least recently used goes first), and puts back a chat evicted meanwhile."""
        cache = ContextCache(chats_max=2)
        entry: list[list[object]] = [["1-0", ["u", "1", "c", "abcd", "t", "1", "m", "0", "f", ""]]]
        for chat in ("a", "b"):
            cache.remember(chat, entry, length=1, count=5)
        plan = cache.plan("a", "msgs", 5)
        merged = cache.merge("a", plan, [], length=1, newest_id="1-0", count=5)
        assert [m.content for m in merged or []] == ["abcd"]
        cache.remember("c", entry, length=1, count=5)
        assert [cache.plan(chat, "msgs", 5).base is not None for chat in "abc"] == [True, False, True]
        # Evicted between the plan and the merge (other chats' reserves): the merge keeps it again.
        plan = cache.plan("c", "msgs", 5)
        cache.forget("c")
        assert cache.merge("c", plan, [], length=1, newest_id="1-0", count=5) is not None
        assert cache.plan("c", "msgs", 5).base is plan.base

    def test_a_chat_one_worker_writes_keeps_a_window_of_its_newest_messages(self) -> None:
        """A chat cached whole while shorter than the reserve's count grows into a window of that many
        messages and keeps that size as the worker's settles extend it: the newest ones, their
        characters counted. (It used to keep the whole chat, so every settle copied all of it.)"""
        cache = ContextCache()
        cache.remember("a", [], length=0, count=3)
        newest = "0-0"
        for n in range(1, 6):
            user = make_message(f"{n}-1", is_user=True, content=f"q{n}", tokens=1, charged_milli=0, flags="")
            reply = make_message(
                f"{n}-2", is_user=False, content=f"a{n}!", tokens=1, charged_milli=1, flags=""
            )
            previous, newest = newest, f"{n}-2"
            cache.extend(
                "a", [reply, user], previous_id="" if n == 1 else previous, newest_id=newest, length=2 * n
            )
        base = cache.plan("a", "msgs", 3).base
        assert base is not None
        assert (base.newest_id, base.length) == ("5-2", 10)
        assert [m.content for m in base.messages] == ["a5!", "q5", "a4!"]
        assert base.chars == len("a5!q5a4!")
        assert cache.merge("a", cache.plan("a", "msgs", 3), [], length=10, newest_id="5-2", count=3) == (
            base.messages
        )
