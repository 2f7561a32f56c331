"""The context list: reserve prices history from token counts settle keeps, never from stale ones (issue 6).

Each test states what a reserve must see; the list is only a faster way to see it, so a list that is
missing (a chat made before it existed) or out of step (a message appended by a worker that did not keep
it) must give the same context and price as the stream itself.
"""

from __future__ import annotations

from ledger import ConfigRecord, Ledger, RedisClient, Reservation
from ledger.limits import CONTEXT_TOKENS_KEPT
from tests.integration.helpers import reserve, settle


async def _history(ledger: Ledger, config: ConfigRecord, chat_id: str, exchanges: int) -> None:
    """`exchanges` settled exchanges; the n-th question costs n+1 tokens and its reply 1."""
    for n in range(exchanges):
        held = await reserve(ledger, config, chat_id, prompt_tokens=1, completion_tokens_max=1)
        await settle(ledger, held, charge_milli=1, user=f"q{n}", reply=f"a{n}", user_tokens=n + 1)


async def _context(ledger: Ledger, config: ConfigRecord, chat_id: str, count: int = 6) -> Reservation:
    held = await reserve(
        ledger, config, chat_id, prompt_tokens=1, history_tokens_max=10_000, history_count_max=count
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
        assert await redis_client.lrange(ledger.keys.chat_context_tokens(chat.chat_id), 0, -1) == [
            "1", "4", "1", "3", "1", "2", "1", "1",
        ]  # fmt: skip

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
