"""History entry ids are `<position>-<time ms>` (settle.lua), so an offset page is an XRANGE by id with no
walk (history.lua): pages at any depth equal the slice of the whole history, cursors and offsets agree,
and chats written before positions (time ids) still page correctly, by the walk."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ledger import ConfigRecord, HistoryQuery, Keyspace, Ledger, RedisClient, StoredMessage, TenantStore
from ledger.history import POSITION_ID_BELOW, format_message_id, make_message
from tests.integration.helpers import reserve, settle

PAGE = 50


async def _exchange(ledger: Ledger, config: ConfigRecord, chat_id: str, n: int) -> None:
    held = await reserve(ledger, config, chat_id)
    await settle(ledger, held, charge_milli=1_000, user=f"q{n}", reply=f"a{n}")


async def _whole(ledger: Ledger, config: ConfigRecord, chat_id: str) -> list[StoredMessage]:
    """The whole history by `after` cursors, 7 at a time: no offset involved."""
    whole: list[StoredMessage] = []
    while True:
        after = whole[-1].message_id if whole else "0-0"
        page = await ledger.read_history(config.config_id, chat_id, HistoryQuery(limit=7, after=after))
        if not page.items:
            return whole
        whole += page.items


async def _assert_offsets_are_slices(ledger: Ledger, config: ConfigRecord, chat_id: str) -> None:
    whole = await _whole(ledger, config, chat_id)
    for limit in (1, 3, 10):
        for offset in range(len(whole) + 2):
            page = await ledger.read_history(
                config.config_id, chat_id, HistoryQuery(limit=limit, offset=offset)
            )
            assert page.items == whole[offset : offset + limit], (offset, limit)
            assert page.total == len(whole)


def _first_part(message: StoredMessage) -> int:
    return int(message.message_id.partition("-")[0])


class TestPositionalIds:
    async def test_settle_writes_positions_and_offsets_are_slices(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        chat = await ledger.create_chat(config, 10**9)
        for n in range(12):
            await _exchange(ledger, config, chat.chat_id, n)
        whole = await _whole(ledger, config, chat.chat_id)
        assert [m.content for m in whole] == [f"{side}{n}" for n in range(12) for side in "qa"]
        assert [_first_part(m) for m in whole] == list(range(24))
        # The second part is the message's time; both messages of a pair share it.
        assert all(m.timestamp_ms >= POSITION_ID_BELOW for m in whole)
        assert all(m.message_id.endswith(f"-{m.timestamp_ms}") for m in whole)
        assert all(q.timestamp_ms == a.timestamp_ms for q, a in zip(whole[::2], whole[1::2], strict=True))
        assert sorted(m.message_id for m in whole) == [m.message_id for m in whole]
        await _assert_offsets_are_slices(ledger, config, chat.chat_id)


class TestChatsWrittenBeforePositions:
    """Compatibility: a chat whose entries have time ids (Redis's `*`, as settle wrote them before) keeps
    them, since its next id must be above them; its offset pages walk, as before, and equal the slices."""

    async def test_a_time_id_chat_stays_one(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient, keyspace: Keyspace
    ) -> None:
        chat = await ledger.create_chat(config, 10**9)
        stream = keyspace.chat_messages(chat.chat_id)
        for n in range(5):
            for side, user in (("q", "1"), ("a", "0")):
                await redis_client.xadd(stream, {"u": user, "c": f"{side}{n}", "t": "1", "m": "0", "f": ""})
        for n in range(5, 9):
            await _exchange(ledger, config, chat.chat_id, n)
        whole = await _whole(ledger, config, chat.chat_id)
        assert [m.content for m in whole] == [f"{side}{n}" for n in range(9) for side in "qa"]
        assert all(_first_part(m) >= POSITION_ID_BELOW for m in whole)
        assert all(m.timestamp_ms == _first_part(m) for m in whole)
        await _assert_offsets_are_slices(ledger, config, chat.chat_id)

    async def test_an_old_workers_append_ends_the_positions(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient, keyspace: Keyspace
    ) -> None:
        """A rolling deploy: an old worker appends with `*` to a positional chat. The positions before it
        stay, the chat goes on with time ids, and every offset page is still the slice."""
        chat = await ledger.create_chat(config, 10**9)
        for n in range(4):
            await _exchange(ledger, config, chat.chat_id, n)
        stream = keyspace.chat_messages(chat.chat_id)
        for side, user in (("q", "1"), ("a", "0")):
            await redis_client.xadd(stream, {"u": user, "c": f"{side}4", "t": "1", "m": "0", "f": ""})
        for n in range(5, 8):
            await _exchange(ledger, config, chat.chat_id, n)
        whole = await _whole(ledger, config, chat.chat_id)
        assert [m.content for m in whole] == [f"{side}{n}" for n in range(8) for side in "qa"]
        assert [_first_part(m) for m in whole[:8]] == list(range(8))
        assert all(_first_part(m) >= POSITION_ID_BELOW for m in whole[8:])
        await _assert_offsets_are_slices(ledger, config, chat.chat_id)


# Builds a chat's history as settle.lua lays it out, one Lua loop called per batch: ARGV[1] and ARGV[2]
# the first and the last position, ARGV[3] the time part. Entry i is '<i>-<time>' with the fields u, c,
# t, m, f; the meta's ctxlen and last follow the stream. Batches keep each call short: one call of a
# million XADDs outlives the client's read timeout on a busy machine, and holds Redis (BUSY) meanwhile.
_BUILD = """
local first, last, time = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local id
for i = first, last do
  local user = i % 2 == 0
  id = string.format('%d', i) .. '-' .. time
  redis.call('XADD', KEYS[2], id, 'u', user and '1' or '0', 'c', 'm' .. i, 't', tostring(i % 7 + 1),
    'm', user and '0' or tostring(i % 5000), 'f', '')
end
redis.call('HSET', KEYS[1], 'ctxlen', last + 1, 'last', id)
return id
"""

MILLION = 1_000_000
BUILD_BATCH = 50_000


def _expected(offset: int, count: int, time_ms: int) -> list[StoredMessage]:
    """Messages offset .. offset + count - 1 as _BUILD wrote them."""
    return [
        make_message(
            f"{i}-{time_ms}",
            is_user=i % 2 == 0,
            content=f"m{i}",
            tokens=i % 7 + 1,
            charged_milli=0 if i % 2 == 0 else i % 5000,
            flags="",
        )
        for i in range(offset, min(offset + count, MILLION))
    ]


@pytest.mark.redis
@pytest.mark.slow
async def test_a_million_message_chat(real_redis: Redis, keyspace: Keyspace) -> None:
    """Pages at offsets 0, 250,000, 500,000 and 999,950 of a 1,000,000-message chat are the slices; the
    cursors around each page agree with it; a settle after the build goes on with the positions."""
    ledger = Ledger(real_redis, keyspace)
    await ledger.start()
    config = await TenantStore(real_redis, keyspace).create_config(agent_name="Agent", company_name="Co")
    chat = await ledger.create_chat(config, 10**9)
    time_ms = 1_764_770_000_000
    keys = (keyspace.chat_meta(chat.chat_id), keyspace.chat_messages(chat.chat_id))
    for first in range(0, MILLION, BUILD_BATCH):
        newest = await real_redis.eval(_BUILD, 2, *keys, first, first + BUILD_BATCH - 1, time_ms)
    assert newest == f"{MILLION - 1}-{time_ms}"

    for offset in (0, 250_000, 500_000, 999_950):
        page = await ledger.read_history(
            config.config_id, chat.chat_id, HistoryQuery(limit=PAGE, offset=offset)
        )
        assert page.total == MILLION
        assert page.items == _expected(offset, PAGE, time_ms)
        if offset:
            before = _expected(offset - 1, 1, time_ms)[0].message_id
            after = await ledger.read_history(
                config.config_id, chat.chat_id, HistoryQuery(limit=PAGE, after=before)
            )
            assert after.items == page.items
        following = _expected(offset + PAGE, 1, time_ms)
        if following:
            earlier = await ledger.read_history(
                config.config_id, chat.chat_id, HistoryQuery(limit=PAGE, before=following[0].message_id)
            )
            assert earlier.items == page.items

    # No walk: the deep page is one range read inside the script (Redis counts a script's commands).
    await real_redis.config_resetstat()
    await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=PAGE, offset=500_000))
    stats = await real_redis.info("commandstats")
    reads = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("xrange", "xrevrange"))
    assert reads == 1, stats

    await _exchange(ledger, config, chat.chat_id, MILLION)
    tail = await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=PAGE, offset=MILLION))
    assert [m.content for m in tail.items] == [f"q{MILLION}", f"a{MILLION}"]
    assert [m.message_id.partition("-")[0] for m in tail.items] == [
        format_message_id(f"{MILLION}-0").partition("-")[0],
        format_message_id(f"{MILLION + 1}-0").partition("-")[0],
    ]
    assert tail.total == MILLION + 2
