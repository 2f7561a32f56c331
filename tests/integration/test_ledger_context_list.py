"""The context list: reserve prices history from token counts settle keeps, never from stale ones.

Each test states what a reserve must see; the list is only a faster way to see it, so a list that is
missing (a chat made before it existed) or out of step (a message appended by a worker that did not keep
it) must give the same context and price as the stream itself.
"""

from __future__ import annotations

from ledger import ConfigRecord, Ledger, RedisClient
from ledger.limits import CONTEXT_TOKENS_KEPT, CONTEXT_TOKENS_SLACK
from tests.integration.helpers import numbered_exchanges, reserve, settle, voided_context


async def _kept_counts(redis_client: RedisClient, ledger: Ledger, chat_id: str) -> list[int]:
    """The packed token counts settle keeps (4 bytes each, big-endian, oldest first)."""
    packed = await redis_client.execute_command("GETRANGE", ledger.keys.chat_context_tokens(chat_id), 0, -1)
    raw = packed.encode("latin-1") if isinstance(packed, str) else bytes(packed)
    return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]


class TestContextList:
    async def test_a_chat_without_a_list_is_priced_from_its_stream(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """A chat from before the list (no list, no `ctxlen`) gets the same context and price; the
        reserve rebuilds the list, and the next reserve agrees."""
        chat = await ledger.create_chat(config, 10_000_000)
        await numbered_exchanges(ledger, config, chat.chat_id, 4)
        expected = await voided_context(ledger, config, chat.chat_id)
        await redis_client.delete(ledger.keys.chat_context_tokens(chat.chat_id))
        await redis_client.hdel(ledger.keys.chat_meta(chat.chat_id), "ctxlen")
        rebuilt = await voided_context(ledger, config, chat.chat_id)
        again = await voided_context(ledger, config, chat.chat_id)
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
        await numbered_exchanges(ledger, config, chat.chat_id, 3)
        await redis_client.hdel(ledger.keys.chat_meta(chat.chat_id), "last")
        fresh = Ledger(redis_client, ledger.keys)
        assert [m.content for m in (await voided_context(fresh, config, chat.chat_id)).context] == [
            "q0", "a0", "q1", "a1", "q2", "a2",
        ]  # fmt: skip
        assert await redis_client.hget(ledger.keys.chat_meta(chat.chat_id), "last") is not None

    async def test_a_message_the_list_missed_is_priced(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """A message appended without the list (an older worker's settle) puts the list out of step:
        the next reserve sees the message and its tokens anyway."""
        chat = await ledger.create_chat(config, 10_000_000)
        await numbered_exchanges(ledger, config, chat.chat_id, 2)
        await redis_client.xadd(
            ledger.keys.chat_messages(chat.chat_id), {"u": "1", "c": "late", "t": "7", "m": "0", "f": ""}
        )
        held = await voided_context(ledger, config, chat.chat_id, count=3)
        assert [m.content for m in held.context] == ["q1", "a1", "late"]
        assert held.prompt_milli == (1 + 2 + 1 + 7) * 1000
        # Settles keep the rebuilt list in step from here on.
        await numbered_exchanges(ledger, config, chat.chat_id, 1)
        held = await voided_context(ledger, config, chat.chat_id, count=3)
        assert [m.content for m in held.context] == ["late", "q0", "a0"]
        assert held.prompt_milli == (1 + 7 + 1 + 1) * 1000

    async def test_all_kept_counts_price_newest_first(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient
    ) -> None:
        """A context of every kept count, cut by the token budget: the script reads the counts in one
        call (struct on a real Redis) and must take them newest first, stopping at the first that does
        not fit."""
        chat = await ledger.create_chat(config, 10**12)
        await numbered_exchanges(ledger, config, chat.chat_id, CONTEXT_TOKENS_KEPT // 2)
        # Newest first the counts are 1, 64, 1, 63, ... 1, 1: the budget takes the newest 20.
        newest = [c for n in reversed(range(CONTEXT_TOKENS_KEPT // 2)) for c in (1, n + 1)]
        budget = sum(newest[:20])
        fresh = Ledger(redis_client, ledger.keys)
        held = await voided_context(fresh, config, chat.chat_id, count=CONTEXT_TOKENS_KEPT, tokens_max=budget)
        assert len(held.context) == 20
        assert held.prompt_milli == (1 + budget) * 1000

    async def test_a_context_longer_than_the_list_is_priced_from_the_stream(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """history_count_max above CONTEXT_TOKENS_KEPT still prices every message it takes."""
        chat = await ledger.create_chat(config, 10**12)
        exchanges = CONTEXT_TOKENS_KEPT // 2 + 3
        await numbered_exchanges(ledger, config, chat.chat_id, exchanges)
        held = await voided_context(ledger, config, chat.chat_id, count=CONTEXT_TOKENS_KEPT + 4)
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
        await numbered_exchanges(ledger, config, chat.chat_id, exchanges)
        kept = len(await _kept_counts(redis_client, ledger, chat.chat_id))
        assert CONTEXT_TOKENS_KEPT <= kept <= CONTEXT_TOKENS_KEPT + CONTEXT_TOKENS_SLACK
        assert kept < 2 * exchanges
        held = await voided_context(
            Ledger(redis_client, ledger.keys), config, chat.chat_id, count=CONTEXT_TOKENS_KEPT
        )
        newest = range(exchanges - CONTEXT_TOKENS_KEPT // 2, exchanges)
        assert held.prompt_milli == (1 + sum(n + 1 + 1 for n in newest)) * 1000
