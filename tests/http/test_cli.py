"""The `chatledger` CLI against a real redis-server: configs and keys, and its refusals."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

import ledger
from service.cli import main
from tests.redis_servers import RedisServer


@pytest.fixture
def redis_env(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> RedisServer:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("CHATLEDGER_KEY_PREFIX", "clcli")
    return redis_server


def _store_call(server: RedisServer, api_key: str) -> str | None:
    async def resolve() -> str | None:
        client = ledger.connect(server.url)
        try:
            return await ledger.TenantStore(client, ledger.Keyspace("clcli")).resolve_key(api_key)
        finally:
            await client.aclose()

    return asyncio.run(resolve())


@pytest.mark.redis
class TestCli:
    def test_config_and_key_lifecycle(
        self, redis_env: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """config create prints an id and a working key once; key create/list/revoke manage more keys."""
        create = ["config", "create", "--agent-name", "Bot", "--company-name", "Acme"]
        assert (
            main([*create, "--primary-color", "#00FF00", "--full-width", "--completion-weight", "2.5"]) == 0
        )
        out = capsys.readouterr().out
        config_id = re.search(r"config_id: (\S+)", out)
        first_key = re.search(r"api_key:\s+(\S+)", out)
        assert config_id
        assert first_key
        assert _store_call(redis_env, first_key[1]) == config_id[1]

        assert main(["config", "show", config_id[1]]) == 0
        shown = capsys.readouterr().out
        assert '"primary_color": "#00FF00"' in shown
        assert '"is_full_width": true' in shown
        assert '"completion_token_weight": 2.5' in shown
        assert first_key[1] not in shown

        assert main(["key", "create", config_id[1]]) == 0
        second = re.search(r"key_id:\s+(\S+)\napi_key:\s+(\S+)", capsys.readouterr().out)
        assert second
        assert main(["key", "list", config_id[1]]) == 0
        listing = capsys.readouterr().out
        assert second[1] in listing
        assert first_key[1] not in listing
        assert second[2] not in listing

        assert main(["key", "revoke", config_id[1], second[1]]) == 0
        assert _store_call(redis_env, second[2]) is None
        assert main(["key", "revoke", first_key[1]]) == 0
        assert _store_call(redis_env, first_key[1]) is None
        assert main(["key", "revoke", first_key[1]]) == 1

    def test_refuses_without_redis_url(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Admin commands need REDIS_URL: the embedded store lives inside the server."""
        monkeypatch.delenv("REDIS_URL", raising=False)
        assert main(["config", "list"]) == 2
        assert "REDIS_URL" in capsys.readouterr().err

    def test_bad_setting_is_named(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unparsable environment variable fails with its name."""
        monkeypatch.setenv("CHATLEDGER_PORT", "eighty")
        assert main(["serve"]) == 2
        assert "CHATLEDGER_PORT" in capsys.readouterr().err

    def test_unknown_config(self, redis_env: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
        """Showing or keying a config that does not exist fails with a message, not a traceback."""
        assert main(["config", "show", "5b7a3c1e-0000-4000-8000-000000000000"]) == 1
        assert main(["key", "create", "not-a-uuid"]) == 1
        assert "No chat configuration" in capsys.readouterr().err


@pytest.mark.redis
class TestOperatorCommands:
    def test_update_delete_and_chat_commands(
        self, redis_env: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """config update/delete and chat show/restore/journal do what the admin API does."""
        assert main(["config", "create", "--agent-name", "Bot", "--company-name", "Acme"]) == 0
        out = capsys.readouterr().out
        config_id = re.search(r"config_id: (\S+)", out)
        api_key = re.search(r"api_key:\s+(\S+)", out)
        assert config_id
        assert api_key
        assert main(["config", "update", config_id[1], "--header-text", "Hi", "--rate-limit-per-s", "2"]) == 0
        updated = json.loads(capsys.readouterr().out)
        assert (updated["header_text"], updated["rate_limit_per_s"], updated["agent_name"]) == (
            "Hi",
            2.0,
            "Bot",
        )

        chat_id = asyncio.run(_chat_with_exchange(redis_env, config_id[1]))
        assert main(["chat", "show", chat_id]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["deleted"], shown["token_used"]) == (True, 3.0)
        assert main(["chat", "restore", chat_id]) == 0
        assert json.loads(capsys.readouterr().out)["deleted"] is False
        assert main(["chat", "journal", chat_id]) == 0
        journal = capsys.readouterr().out.splitlines()
        assert [line.split()[1] for line in journal[:-1]] == ["create", "reserve", "settle"]
        assert journal[-1].startswith("reconciled: 3 entries; used 3.000 / 3.000")
        assert main(["chat", "show", "5b7a3c1e-0000-4000-8000-000000000000"]) == 1

        assert main(["config", "delete", config_id[1]]) == 0
        assert _store_call(redis_env, api_key[1]) is None
        assert main(["config", "show", config_id[1]]) == 1


async def _chat_with_exchange(server: RedisServer, config_id: str) -> str:
    """A chat of the config with one settled exchange (3 tokens), then soft-deleted."""
    client = ledger.connect(server.url)
    try:
        keys = ledger.Keyspace("clcli")
        config = await ledger.TenantStore(client, keys).get_config(config_id)
        assert config is not None
        book = ledger.Ledger(client, keys)
        await book.start()
        chat = await book.create_chat(config, 10_000)
        hold = await book.reserve(
            config,
            chat.chat_id,
            prompt_tokens=1,
            completion_tokens_max=5,
            history_tokens_max=0,
            history_count_max=0,
        )
        await book.settle(
            hold, charge_milli=3_000, user_content="q", user_tokens=1, reply_content="a", reply_tokens=1
        )
        await book.delete_chat(config_id, chat.chat_id)
        return chat.chat_id
    finally:
        await client.aclose()


@pytest.mark.redis
class TestEraseCommands:
    def test_chat_erase_and_config_erase(
        self, redis_env: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`chat erase` removes one chat for good (a second run is 1, not found); `config erase` removes
        the config and its other chats, and says how many."""
        assert main(["config", "create", "--agent-name", "Bot", "--company-name", "Acme"]) == 0
        config_id = re.search(r"config_id: (\S+)", capsys.readouterr().out)
        assert config_id
        erased = asyncio.run(_chat_with_exchange(redis_env, config_id[1]))
        others = [asyncio.run(_chat_with_exchange(redis_env, config_id[1])) for _ in range(2)]
        assert main(["chat", "erase", erased]) == 0
        assert f"erased chat {erased}" in capsys.readouterr().err
        assert main(["chat", "show", erased]) == 1
        assert main(["chat", "erase", erased]) == 1
        assert main(["config", "erase", config_id[1]]) == 0
        assert f"and {len(others)} chats" in capsys.readouterr().err
        for chat_id in others:
            assert main(["chat", "show", chat_id]) == 1
        assert main(["config", "erase", config_id[1]]) == 1


async def _deleted_score(server: RedisServer, config_id: str, chat_id: str) -> float | None:
    """The chat's score in its config's deleted index (None: not in it)."""
    client = ledger.connect(server.url)
    try:
        index = ledger.Keyspace("clcli").config_deleted_chats(config_id)
        return await client.zscore(index, chat_id)
    finally:
        await client.aclose()


async def _drop_deleted_entry(server: RedisServer, config_id: str, chat_id: str) -> None:
    client = ledger.connect(server.url)
    try:
        await client.zrem(ledger.Keyspace("clcli").config_deleted_chats(config_id), chat_id)
    finally:
        await client.aclose()


@pytest.mark.redis
class TestRetentionBackfillCommand:
    def test_backfill_indexes_an_old_deleted_chat_once(
        self, redis_env: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A deleted chat missing from its config's deleted index is put back in it at its deletion
        time; a second run finds nothing to add."""
        assert main(["config", "create", "--agent-name", "Bot", "--company-name", "Acme"]) == 0
        config_id = re.search(r"config_id: (\S+)", capsys.readouterr().out)
        assert config_id
        chat_id = asyncio.run(_chat_with_exchange(redis_env, config_id[1]))
        score = asyncio.run(_deleted_score(redis_env, config_id[1], chat_id))
        assert score is not None
        # As a delete before the deleted index existed left it.
        asyncio.run(_drop_deleted_entry(redis_env, config_id[1], chat_id))
        assert main(["retention", "backfill"]) == 0
        assert re.search(r"indexed [1-9]\d* deleted chats", capsys.readouterr().err)
        assert asyncio.run(_deleted_score(redis_env, config_id[1], chat_id)) == score
        assert main(["retention", "backfill"]) == 0
        assert "indexed 0 deleted chats" in capsys.readouterr().err


@pytest.mark.redis
class TestExportCommand:
    def test_export_prints_ndjson_and_resumes(
        self, redis_env: RedisServer, capsysbinary: pytest.CaptureFixture[bytes]
    ) -> None:
        """`chatledger export` writes the same lines as the admin route; `--cursor` resumes after one."""
        assert main(["config", "create", "--agent-name", "Bot", "--company-name", "Acme"]) == 0
        config_id = re.search(rb"config_id: (\S+)", capsysbinary.readouterr().out)
        assert config_id
        chat_id = asyncio.run(_chat_with_exchange(redis_env, config_id[1].decode()))
        assert main(["export", config_id[1].decode()]) == 0
        assert capsysbinary.readouterr().out == b'{"type":"end","chats":0,"messages":0}\n'
        assert main(["export", config_id[1].decode(), "--include-deleted"]) == 0
        lines = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
        assert [line["type"] for line in lines] == ["chat", "message", "message", "end"]
        assert lines[0]["chat"]["chat_id"] == chat_id
        assert (
            main(["export", config_id[1].decode(), "--include-deleted", "--cursor", lines[1]["cursor"]]) == 0
        )
        rest = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
        assert rest[0] == lines[2]
        assert main(["export", config_id[1].decode(), "--cursor", "junk"]) == 2
