"""Erasure: a chat, or a whole config, removed for good, on every backend (a real redis-server and a
real Redis Cluster included): nothing of it is left (SCAN for its hash tag), everything else is
untouched, and an erasure interrupted midway is finished by running it again."""

from __future__ import annotations

import pytest

from ledger import (
    ChatNotFound,
    ConfigRecord,
    HistoryQuery,
    IdempotencyKey,
    Keyspace,
    Ledger,
    RedisClient,
    TenantStore,
    erasure,
)
from tests.integration.helpers import chat_snapshot, reserve, settle


async def keys_tagged(client: RedisClient, tag: str) -> list[str]:
    """Every key whose name holds `tag`, on every node of a cluster."""
    return [key async for key in client.scan_iter(match=f"*{tag}*")]


async def busy_chat(book: Ledger, config: ConfigRecord, *, exchanges: int = 3) -> str:
    """A chat with messages, a keyed exchange and a keyed top-up (idempotency records), an open hold
    and a voided one: every kind of key a chat has."""
    chat_id = (await book.create_chat(config, 10**9)).chat_id
    for n in range(exchanges):
        await settle(book, await reserve(book, config, chat_id), charge_milli=1_000, user=f"q{n}")
    keyed = IdempotencyKey.of("retry-1", "message", chat_id, "q")
    await settle(book, await reserve(book, config, chat_id, idempotency=keyed), charge_milli=1_000)
    await book.top_up(config.config_id, chat_id, 5_000, idempotency=IdempotencyKey.of("t", "top_up", "5"))
    await book.void(await reserve(book, config, chat_id))
    await reserve(book, config, chat_id)  # left open: a worker still waiting on its model
    return chat_id


class TestEraseChat:
    async def test_nothing_of_the_chat_is_left(
        self, redis_client: RedisClient, keyspace: Keyspace, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """Every key with the chat's hash tag goes, idempotency records included; another chat of the
        same config is byte for byte as it was; the config's indexes forget the chat."""
        erased, kept = await busy_chat(ledger, config), await busy_chat(ledger, config)
        tag = f"{{c:{erased}}}"
        assert any(":idem:" in key for key in await keys_tagged(redis_client, tag))
        before = await chat_snapshot(redis_client, keyspace, kept)  # type: ignore[arg-type]

        assert await ledger.erase_chat(erased) == config.config_id

        assert await keys_tagged(redis_client, tag) == []
        assert await chat_snapshot(redis_client, keyspace, kept) == before  # type: ignore[arg-type]
        for index in (keyspace.config_chats, keyspace.config_live_chats, keyspace.config_deleted_chats):
            assert await redis_client.zscore(index(config.config_id), erased) is None
        assert await redis_client.zscore(keyspace.config_chats(config.config_id), kept) is not None

    async def test_an_erased_chat_is_not_found_everywhere(self, ledger: Ledger, config: ConfigRecord) -> None:
        """Reads (the admin's too), messages, top-ups, deletes and a second erasure: all ChatNotFound,
        and none of them writes anything back."""
        chat_id = await busy_chat(ledger, config)
        await ledger.erase_chat(chat_id)
        attempts = [
            ledger.get_chat(None, chat_id),
            ledger.get_chat(config.config_id, chat_id),
            ledger.read_history(None, chat_id, HistoryQuery(limit=10)),
            ledger.read_history(config.config_id, chat_id, HistoryQuery(limit=10)),
            reserve(ledger, config, chat_id),
            ledger.top_up(config.config_id, chat_id, 1_000),
            ledger.delete_chat(config.config_id, chat_id),
            ledger.restore_chat(chat_id),
            ledger.erase_chat(chat_id),
        ]
        for attempt in attempts:
            with pytest.raises(ChatNotFound):
                await attempt
        assert await ledger.read_journal(chat_id) == []

    async def test_a_hold_open_during_erasure_settles_as_not_found(
        self, redis_client: RedisClient, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A worker whose model answers after the erasure writes nothing: its settle finds no chat."""
        chat_id = (await ledger.create_chat(config, 10**6)).chat_id
        hold = await reserve(ledger, config, chat_id)
        await ledger.erase_chat(chat_id)
        with pytest.raises(ChatNotFound):
            await settle(ledger, hold, charge_milli=1_000)
        with pytest.raises(ChatNotFound):
            await ledger.void(hold)
        assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []

    async def test_a_chat_of_another_config_is_not_erased_in_its_name(
        self, ledger: Ledger, tenants: TenantStore, config: ConfigRecord
    ) -> None:
        other = await tenants.create_config(agent_name="Other", company_name="Co")
        chat_id = (await ledger.create_chat(other, 1_000)).chat_id
        with pytest.raises(ChatNotFound):
            await ledger.erase_chat(chat_id, config_id=config.config_id)
        assert (await ledger.get_chat(None, chat_id)).config_id == other.config_id

    async def test_leftovers_of_an_interrupted_erasure_go(
        self, redis_client: RedisClient, keyspace: Keyspace, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """A chat whose meta hash went but whose records did not (a crash between two calls) answers
        not found, and the erasure asked again removes what was left."""
        chat_id = (await ledger.create_chat(config, 10**9)).chat_id
        for n in range(3):
            key = IdempotencyKey.of(f"k{n}", "top_up", "1")
            await ledger.top_up(config.config_id, chat_id, 1_000, idempotency=key)
        await redis_client.delete(keyspace.chat_meta(chat_id))
        with pytest.raises(ChatNotFound):
            await ledger.erase_chat(chat_id)
        assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []
        # Without its meta hash the chat's config is not known: its index entry is left for the
        # listing to repair, or goes when the config is named (a config's erasure names it).
        index = keyspace.config_chats(config.config_id)
        assert await redis_client.zscore(index, chat_id) is not None
        with pytest.raises(ChatNotFound):
            await ledger.erase_chat(chat_id, config_id=config.config_id)
        assert await redis_client.zscore(index, chat_id) is None


class TestDeletedIndex:
    async def test_delete_indexes_and_restore_unindexes(
        self, redis_client: RedisClient, keyspace: Keyspace, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """The retention pass reads the config's deleted index: a soft delete adds the chat with its
        deletion time, a restore takes it out."""
        chat_id = (await ledger.create_chat(config, 1_000)).chat_id
        deleted = await ledger.delete_chat(config.config_id, chat_id)
        index = keyspace.config_deleted_chats(config.config_id)
        assert await redis_client.zscore(index, chat_id) == deleted.deleted_ms
        await ledger.restore_chat(chat_id)
        assert await redis_client.zscore(index, chat_id) is None


class Crash(Exception):
    """Stands for a worker dying midway through an erasure."""


class TestEraseConfig:
    async def test_every_chat_goes_and_other_configs_stay(
        self,
        redis_client: RedisClient,
        keyspace: Keyspace,
        ledger: Ledger,
        tenants: TenantStore,
        config: ConfigRecord,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A config of more chats than a batch (deleted ones among them) is erased with its keys and
        indexes; an interrupted erasure is finished by a second run; another config's chat is kept."""
        monkeypatch.setattr(erasure, "CHATS_BATCH", 4)
        other = await tenants.create_config(agent_name="Other", company_name="Co")
        kept = await busy_chat(ledger, other, exchanges=1)
        before = await chat_snapshot(redis_client, keyspace, kept)  # type: ignore[arg-type]
        await tenants.issue_key(config.config_id)
        chats = [await busy_chat(ledger, config, exchanges=1) for _ in range(10)]
        for chat_id in chats[::3]:
            await ledger.delete_chat(config.config_id, chat_id)

        erase_keys = erasure.Erasure._erase_keys
        done: list[str] = []

        async def dies_after_six(self: Ledger, chat_id: str, *args: object, **kwargs: object) -> object:
            if len(done) == 6:
                raise Crash()
            done.append(chat_id)
            return await erase_keys(self, chat_id, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(erasure.Erasure, "_erase_keys", dies_after_six)
        with pytest.raises(Crash):
            await ledger.erase_config(config.config_id)
        assert await tenants.get_config(config.config_id) is None  # the config went first
        assert await ledger.config_exists(config.config_id)  # its chats are not all gone yet
        monkeypatch.setattr(erasure.Erasure, "_erase_keys", erase_keys)

        assert await ledger.erase_config(config.config_id) == len(chats) - 6
        for chat_id in chats:
            assert await keys_tagged(redis_client, f"{{c:{chat_id}}}") == []
        assert await keys_tagged(redis_client, f"{{g:{config.config_id}}}") == []
        assert not await ledger.config_exists(config.config_id)
        assert config.config_id not in await tenants.list_config_ids()
        assert await chat_snapshot(redis_client, keyspace, kept) == before  # type: ignore[arg-type]
        assert await tenants.get_config(other.config_id) is not None
        assert await ledger.erase_config(config.config_id) == 0  # a third run finds nothing to do
