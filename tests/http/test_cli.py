"""The `chatledger` CLI against a real redis-server: configs and keys, and its refusals."""

from __future__ import annotations

import asyncio
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
        assert '"completion_weight_milli": 2500' in shown
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
