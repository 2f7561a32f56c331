"""Key names: one cluster slot per chat script, validated ids, a safe prefix (design.md section 3)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from ledger import (
    ChatDeleted,
    ConfigRecord,
    HistoryQuery,
    Keyspace,
    Ledger,
    ReservationAlreadySettled,
    TenantStore,
    embedded_redis,
    normalize_uuid,
)
from ledger.scripts import SCRIPT_NAMES, script_source

CHAT_ID = "0b0e9a4c-3f5e-4f63-9d57-2a0a2c6f1b11"
CONFIG_ID = "7d3c2b1a-0f9e-4d8c-8b7a-6f5e4d3c2b1a"


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


class TestChatKeys:
    def test_chat_keys_share_one_slot(self) -> None:
        """Every key of one chat hashes to the same cluster slot, through the `{c:<id>}` tag."""
        keyspace = Keyspace("cl")
        keys = [*keyspace.chat_keys(CHAT_ID), keyspace.chat_idempotency(CHAT_ID, "ab" * 32)]
        assert len(keys) == len(set(keys)) == 8
        assert len(slots(keys)) == 1

    def test_chat_keys_are_the_one_key_names_in_script_order(self) -> None:
        """chat_keys (built in one go for speed) names exactly what the one-key methods name."""
        keyspace = Keyspace("cl")
        assert keyspace.chat_keys(CHAT_ID) == [
            keyspace.chat_meta(CHAT_ID),
            keyspace.chat_messages(CHAT_ID),
            keyspace.chat_deadlines(CHAT_ID),
            keyspace.chat_reservations(CHAT_ID),
            keyspace.chat_journal(CHAT_ID),
            keyspace.chat_context_tokens(CHAT_ID),
            keyspace.chat_resolved(CHAT_ID),
        ]

    def test_different_chats_use_their_own_tag(self) -> None:
        """The slot follows the chat id, not the prefix, so chats spread over the cluster."""
        keyspace = Keyspace("cl")
        tags = {keyspace.chat_tag(str(uuid.uuid4())) for _ in range(50)}
        assert len(tags) == 50
        assert len({key_slot(tag.encode()) for tag in tags}) > 1

    def test_config_keys_share_one_slot(self) -> None:
        """A config's record, chat indexes and key descriptions live on one slot."""
        keyspace = Keyspace("cl")
        keys = [
            keyspace.config_record(CONFIG_ID),
            keyspace.config_chats(CONFIG_ID),
            keyspace.config_live_chats(CONFIG_ID),
            keyspace.config_deleted_chats(CONFIG_ID),
            keyspace.config_deleted_backfill(CONFIG_ID),
            keyspace.config_api_keys(CONFIG_ID),
        ]
        assert len(set(keys)) == 6
        assert len(slots(keys)) == 1

    def test_key_names_carry_the_prefix(self) -> None:
        """Every key starts with the deployment's prefix, so deployments can share a Redis."""
        keyspace = Keyspace("tenant-a")
        keys = [
            *keyspace.chat_keys(CHAT_ID),
            keyspace.config_record(CONFIG_ID),
            keyspace.api_key("a" * 64),
            keyspace.configs(),
        ]
        assert all(key.startswith("tenant-a:") for key in keys)


@pytest_asyncio.fixture
async def fake_redis() -> AsyncIterator[Redis]:
    client = embedded_redis()
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def script_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Records (script name, KEYS) for every script call the ledger makes, pipelined ones included."""
    names = {script_source(name): name for name in SCRIPT_NAMES}
    calls: list[tuple[str, list[str]]] = []
    original = AsyncScript.__call__

    async def recording(self: AsyncScript, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        calls.append((names[str(self.script)], [str(key) for key in keys or []]))
        return await original(self, keys, args, client)

    monkeypatch.setattr(AsyncScript, "__call__", recording)
    return calls


class TestScriptKeysOnTheWire:
    async def test_every_script_call_touches_one_slot(
        self, fake_redis: Redis, script_calls: list[tuple[str, list[str]]]
    ) -> None:
        """Each script the ledger runs, in every operation, gets KEYS of a single cluster slot."""
        keyspace = Keyspace("cl")
        ledger = Ledger(fake_redis, keyspace)
        config: ConfigRecord = await TenantStore(fake_redis, keyspace).create_config(
            agent_name="A", company_name="C"
        )
        chat = await ledger.create_chat(config, 100_000)
        reservation = await ledger.reserve(
            config,
            chat.chat_id,
            prompt_tokens=1,
            completion_tokens_max=5,
            history_tokens_max=100,
            history_count_max=10,
        )
        await ledger.settle(
            reservation,
            charge_milli=2000,
            user_content="hi",
            user_tokens=1,
            reply_content="yo",
            reply_tokens=1,
        )
        with pytest.raises(ReservationAlreadySettled):
            await ledger.void(reservation)
        await ledger.top_up(config.config_id, chat.chat_id, 1000)
        await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        await ledger.delete_chat(config.config_id, chat.chat_id)
        with pytest.raises(ChatDeleted):
            await ledger.read_history(config.config_id, chat.chat_id, HistoryQuery(limit=10))
        await ledger.restore_chat(chat.chat_id)
        await ledger.inspect_chat(chat.chat_id)
        await ledger.erase_chat(chat.chat_id)
        digest = "ab" * 32
        await TenantStore(fake_redis, keyspace).rate_limit(digest, per_s=1.0, burst=1)

        assert {name for name, _keys in script_calls} == set(SCRIPT_NAMES)
        for name, keys in script_calls:
            assert keys, f"{name} was called without keys"
            # The limiter meters an API key, on that key's own slot; every other script is the chat's.
            expected = (
                keyspace.api_key_rate(digest) if name == "rate_limit" else keyspace.chat_meta(chat.chat_id)
            )
            assert slots(keys) == slots([expected]), name


class TestNormalizeUuid:
    @pytest.mark.parametrize(
        "value",
        [CHAT_ID, CHAT_ID.upper(), f"  {CHAT_ID}\n", "0B0E9A4C-3f5e-4F63-9d57-2A0A2C6F1B11"],
    )
    def test_accepts_any_case_and_surrounding_space(self, value: str) -> None:
        """A UUID in any letter case (and with stray whitespace) reads as its canonical lower form."""
        assert normalize_uuid(value) == CHAT_ID

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "not-a-uuid",
            CHAT_ID.replace("-", ""),
            "{" + CHAT_ID + "}",
            CHAT_ID[:-1],
            CHAT_ID + "0",
            CHAT_ID.replace("b", "g"),
            f"urn:uuid:{CHAT_ID}",
            CHAT_ID.replace("-", "_"),
            CHAT_ID + "}:x{",
        ],
    )
    def test_rejects_non_uuids(self, value: str) -> None:
        """Anything that is not a hyphenated 36-character UUID reads as None (a 404 upstream)."""
        assert normalize_uuid(value) is None


class TestKeyspace:
    @pytest.mark.parametrize(
        "chat_id",
        [CHAT_ID.upper(), f" {CHAT_ID}", f"{CHAT_ID}\n", CHAT_ID.replace("-", ""), "x}:{y", "", "*"],
    )
    def test_refuses_non_canonical_chat_ids(self, chat_id: str) -> None:
        """A key is built only from a canonical lower-case UUID, never from an unchecked string."""
        keyspace = Keyspace("cl")
        with pytest.raises(ValueError, match="canonical UUID"):
            keyspace.chat_meta(chat_id)
        with pytest.raises(ValueError, match="canonical UUID"):
            keyspace.chat_keys(chat_id)

    @pytest.mark.parametrize("config_id", [CONFIG_ID.upper(), f"{CONFIG_ID}\n", "config"])
    def test_refuses_non_canonical_config_ids(self, config_id: str) -> None:
        """Config keys are guarded the same way as chat keys."""
        with pytest.raises(ValueError, match="canonical UUID"):
            Keyspace("cl").config_record(config_id)

    @pytest.mark.parametrize("digest", ["a" * 63, "A" * 64, "g" * 64, "a" * 64 + "\n", "clk_secret"])
    def test_api_keys_are_looked_up_by_digest_only(self, digest: str) -> None:
        """The API key index takes a hex SHA-256 digest, so a plain key can never become a key name."""
        with pytest.raises(ValueError, match="digest"):
            Keyspace("cl").api_key(digest)

    @pytest.mark.parametrize("prefix", ["", "{cl}", "cl{", "c}l"])
    def test_refuses_empty_prefix_and_braces(self, prefix: str) -> None:
        """A prefix with braces would change the hash tag, so it is refused."""
        with pytest.raises(ValueError, match="prefix"):
            Keyspace(prefix)

    def test_layout(self) -> None:
        """The key names follow design.md section 3."""
        keyspace = Keyspace("cl")
        assert keyspace.chat_meta(CHAT_ID) == f"cl:{{c:{CHAT_ID}}}:meta"
        assert keyspace.chat_messages(CHAT_ID) == f"cl:{{c:{CHAT_ID}}}:msgs"
        assert keyspace.config_chats(CONFIG_ID) == f"cl:{{g:{CONFIG_ID}}}:chats"
        assert keyspace.api_key("0" * 64) == f"cl:apikey:{'0' * 64}"
