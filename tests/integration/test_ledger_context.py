"""The context list: reserve prices history from token counts settle keeps, never from stale ones.

Each test states what a reserve must see; the list is only a faster way to see it, so a list that is
missing (a chat made before it existed) or out of step (a message appended by a worker that did not keep
it) must give the same context and price as the stream itself.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ledger import ConfigRecord, Keyspace, Ledger, RedisClient, Reservation, TenantStore
from ledger.context import SHARED_RESERVES, ContextCache
from ledger.history import make_message
from ledger.limits import CONTEXT_TOKENS_KEPT, CONTEXT_TOKENS_SLACK
from tests.integration.helpers import reserve, settle


async def _history(ledger: Ledger, config: ConfigRecord, chat_id: str, exchanges: int) -> None:
    """`exchanges` settled exchanges; the n-th question costs n+1 tokens and its reply 1."""
    for n in range(exchanges):
        held = await reserve(ledger, config, chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(ledger, held, charge_milli=1, user=f"q{n}", reply=f"a{n}", user_tokens=n + 1)


async def _kept_counts(redis_client: RedisClient, ledger: Ledger, chat_id: str) -> list[int]:
    """The packed token counts settle keeps (4 bytes each, big-endian, oldest first)."""
    packed = await redis_client.execute_command("GETRANGE", ledger.keys.chat_context_tokens(chat_id), 0, -1)
    raw = packed.encode("latin-1") if isinstance(packed, str) else bytes(packed)
    return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]


async def _context(
    ledger: Ledger, config: ConfigRecord, chat_id: str, count: int = 6, tokens_max: int = 10_000
) -> Reservation:
    held = await reserve(
        ledger, config, chat_id, prompt_tokens=1, history_tokens_max=tokens_max, history_count_max=count
    )
    await ledger.void(held)
    return held


class TestContextList:
    async def test_a_chat_without_a_list_is_priced_from_its_stream(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """A chat from before the list (no list, no `ctxlen`) gets the same context and price; the
        reserve rebuilds the list, and the next reserve agrees."""
        chat = await ledger.create_chat(config, 10_000_000)
        await _history(ledger, config, chat.chat_id, 4)
        expected = await _context(ledger, config, chat.chat_id)
        await redis_client.delete(ledger.keys.chat_context_tokens(chat.chat_id))
        await redis_client.hdel(ledger.keys.chat_meta(chat.chat_id), "ctxlen")
        rebuilt = await _context(ledger, config, chat.chat_id)
        again = await _context(ledger, config, chat.chat_id)
        for held in (rebuilt, again):
            assert [m.content for m in held.context] == [m.content for m in expected.context]
            assert held.prompt_milli == expected.prompt_milli == (1 + 2 + 1 + 3 + 1 + 4 + 1) * 1000
        assert await _kept_counts(redis_client, ledger, chat.chat_id) == [1, 1, 2, 1, 3, 1, 4, 1]

    async def test_a_list_without_its_newest_id_is_rebuilt(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """A list in step by length but without the stream's newest id (`last`) is not trusted: the
        reserve rebuilds it and names the newest id, which checks what the worker reads."""
        chat = await ledger.create_chat(config, 10_000_000)
        await _history(ledger, config, chat.chat_id, 3)
        await redis_client.hdel(ledger.keys.chat_meta(chat.chat_id), "last")
        fresh = Ledger(redis_client, ledger.keys)
        assert [m.content for m in (await _context(fresh, config, chat.chat_id)).context] == [
            "q0", "a0", "q1", "a1", "q2", "a2",
        ]  # fmt: skip
        assert await redis_client.hget(ledger.keys.chat_meta(chat.chat_id), "last") is not None

    async def test_a_message_the_list_missed_is_priced(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """A message appended without the list (an older worker's settle) puts the list out of step:
        the next reserve sees the message and its tokens anyway."""
        chat = await ledger.create_chat(config, 10_000_000)
        await _history(ledger, config, chat.chat_id, 2)
        await redis_client.xadd(
            ledger.keys.chat_messages(chat.chat_id), {"u": "1", "c": "late", "t": "7", "m": "0", "f": ""}
        )
        held = await _context(ledger, config, chat.chat_id, count=3)
        assert [m.content for m in held.context] == ["q1", "a1", "late"]
        assert held.prompt_milli == (1 + 2 + 1 + 7) * 1000
        # Settles keep the rebuilt list in step from here on.
        await _history(ledger, config, chat.chat_id, 1)
        held = await _context(ledger, config, chat.chat_id, count=3)
        assert [m.content for m in held.context] == ["late", "q0", "a0"]
        assert held.prompt_milli == (1 + 7 + 1 + 1) * 1000

    async def test_all_kept_counts_price_newest_first(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """A context of every kept count, cut by the token budget: the script reads the counts in one
        call (struct on a real Redis) and must take them newest first, stopping at the first that does
        not fit."""
        chat = await ledger.create_chat(config, 10**12)
        await _history(ledger, config, chat.chat_id, CONTEXT_TOKENS_KEPT // 2)
        # Newest first the counts are 1, 64, 1, 63, ... 1, 1: the budget takes the newest 20.
        newest = [c for n in reversed(range(CONTEXT_TOKENS_KEPT // 2)) for c in (1, n + 1)]
        budget = sum(newest[:20])
        fresh = Ledger(redis_client, ledger.keys)
        held = await _context(fresh, config, chat.chat_id, count=CONTEXT_TOKENS_KEPT, tokens_max=budget)
        assert len(held.context) == 20
        assert held.prompt_milli == (1 + budget) * 1000

    async def test_a_context_longer_than_the_list_is_priced_from_the_stream(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """history_count_max above CONTEXT_TOKENS_KEPT still prices every message it takes."""
        chat = await ledger.create_chat(config, 10**12)
        exchanges = CONTEXT_TOKENS_KEPT // 2 + 3
        await _history(ledger, config, chat.chat_id, exchanges)
        held = await _context(ledger, config, chat.chat_id, count=CONTEXT_TOKENS_KEPT + 4)
        assert len(held.context) == CONTEXT_TOKENS_KEPT + 4
        # Whole exchanges from the third on, each n+1 + 1 tokens.
        assert held.context[0].content == "q1"
        assert held.prompt_milli == (1 + sum(n + 1 + 1 for n in range(1, exchanges))) * 1000

    async def test_counts_of_every_size_are_kept_exactly(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """Counts that take 1, 2, 3 and 4 bytes of the packed string price the context exactly, from
        the counts settle kept and from counts rebuilt from the stream."""
        chat = await ledger.create_chat(config, 10**15)
        sizes = [0, 255, 256, 65_535, 65_536, 16_777_215, 16_777_216, 2**32 - 1]
        for n, tokens in enumerate(sizes):
            held = await reserve(ledger, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
            await settle(ledger, held, charge_milli=1, user=f"q{n}", reply=f"a{n}", user_tokens=tokens)
        expected = (1 + sum(tokens + 1 for tokens in sizes)) * 1000
        count = 2 * len(sizes)
        for rebuilt in (False, True):
            if rebuilt:
                await redis_client.delete(ledger.keys.chat_context_tokens(chat.chat_id))
            fresh = Ledger(redis_client, ledger.keys)
            held = await reserve(
                fresh,
                config,
                chat.chat_id,
                prompt_tokens=1,
                history_tokens_max=2**40,
                history_count_max=count,
            )
            await fresh.void(held)
            assert held.prompt_milli == expected
            assert len(held.context) == count

    async def test_the_list_stays_bounded(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """Settle trims the list back to CONTEXT_TOKENS_KEPT once it passes the slack, and a context of
        the whole list is still priced from it correctly."""
        chat = await ledger.create_chat(config, 10**12)
        exchanges = (CONTEXT_TOKENS_KEPT + CONTEXT_TOKENS_SLACK) // 2 + 5
        await _history(ledger, config, chat.chat_id, exchanges)
        kept = len(await _kept_counts(redis_client, ledger, chat.chat_id))
        assert CONTEXT_TOKENS_KEPT <= kept <= CONTEXT_TOKENS_KEPT + CONTEXT_TOKENS_SLACK
        assert kept < 2 * exchanges
        held = await _context(
            Ledger(redis_client, ledger.keys), config, chat.chat_id, count=CONTEXT_TOKENS_KEPT
        )
        newest = range(exchanges - CONTEXT_TOKENS_KEPT // 2, exchanges)
        assert held.prompt_milli == (1 + sum(n + 1 + 1 for n in newest)) * 1000


async def _newest(ledger: Ledger, config: ConfigRecord, chat_id: str, count: int = 6) -> list[str]:
    return [m.content for m in (await _context(ledger, config, chat_id, count)).context]


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
            await _history(worker, config, chat.chat_id, 1 + n % 3)
            fresh = Ledger(redis_client, ledger.keys)
            expected = await _newest(fresh, config, chat.chat_id, count=5)
            assert await _newest(ledger, config, chat.chat_id, count=5) == expected
            assert await _newest(other, config, chat.chat_id, count=5) == expected

    async def test_a_bigger_context_than_cached_is_read_whole(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A cache of the newest 2 messages cannot make the newest 6: those are read again."""
        chat = await ledger.create_chat(config, 10**12)
        await _history(ledger, config, chat.chat_id, 4)
        assert await _newest(ledger, config, chat.chat_id, count=2) == ["q3", "a3"]
        await _history(ledger, config, chat.chat_id, 1)
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
        await _history(ledger, config, chat.chat_id, exchanges)
        assert (
            await _newest(ledger, config, chat.chat_id)
            == ["q0", "a0", "q1", "a1", "q2", "a2"][: 2 * exchanges]
        )
        keys = ledger.keys
        await redis_client.delete(keys.chat_messages(chat.chat_id), keys.chat_context_tokens(chat.chat_id))
        await redis_client.hdel(keys.chat_meta(chat.chat_id), "ctxlen", "last")
        other = Ledger(redis_client, keys)
        for n in range(2):
            held = await reserve(other, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
            await settle(other, held, charge_milli=1, user=f"new q{n}", reply=f"new a{n}")
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
        await _history(ledger, config, chat.chat_id, 3)
        await _newest(ledger, config, chat.chat_id)
        await _history(ledger, config, chat.chat_id, 1)
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
        expected = await _context(fresh, config, chat.chat_id)
        assert held.prompt_milli == expected.prompt_milli == (1 + 2 + 1 + 3 + 1 + 1 + 1) * 1000

    async def test_the_cache_prices_as_the_script_does(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """Under every token and count bound (the newest messages that fit, stopping at the first that
        does not), a worker pricing its cache and a worker with nothing cached agree."""
        chat = await ledger.create_chat(config, 10**12)
        await _history(ledger, config, chat.chat_id, 6)
        for tokens_max in (0, 1, 2, 5, 9, 10, 30, 10_000):
            for count_max in (1, 2, 5, 12, 40):
                await _history(ledger, config, chat.chat_id, 1)
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
        await _history(ledger, config, chat.chat_id, 2)
        assert await _newest(ledger, config, chat.chat_id, count=4) == ["q0", "a0", "q1", "a1"]
        held = await reserve(other, config, chat.chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(other, held, charge_milli=1, user="other q", reply="other a", user_tokens=50)
        held = await _context(ledger, config, chat.chat_id, count=4)
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
        await _history(ledger, config, chat.chat_id, 2)

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
        await _history(ledger, config, chat.chat_id, 1)  # "q0", "a0" again: the newest now
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
