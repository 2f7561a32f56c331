"""Every setting has a type and a range; a value outside it stops `chatledger serve` at start, with a
message naming the variable and the range (service/settings.py). The cases are driven from the Settings
fields, so a setting added without a range, or without a case here, fails this file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from service.settings import (
    Settings,
    SettingsError,
    cross_field_problems,
    describe_range,
    env_name,
    reference_table,
    settings_from_env,
)
from tests.redis_servers import free_ports

ROOT = Path(__file__).resolve().parents[2]
FIELDS = list(Settings.__struct_fields__)
# Ends a `serve` that wrongly keeps running; not a timing assertion.
SERVE_BOUND_S = 60

# For every setting, values outside its range: below, above, malformed. The first is also used in the
# one `serve` run that sets them all at once.
OUT_OF_RANGE: dict[str, list[str]] = {
    "host": ["bad host", "h" * 254],
    "port": ["65536", "-1", "http"],
    "base_path": ["/chats/{id}", "/a b", "/" + "p" * 201],
    "redis_url": ["http://localhost:6379", "redis://localhost:notaport", "redis://localhost:6379/zero", "x"],
    "redis_cluster_url": ["unix:///tmp/redis.sock", "redis://:70000", "redis://"],
    "redis_sentinel_url": [
        "redis://a:26379/svc",
        "redis+sentinel://a:26379",
        "redis+sentinel://a:0/svc",
        "redis+sentinel://a/svc",
        "redis+sentinel://a:1,b/svc",
        "redis+sentinel://a:1/svc/zero",
    ],
    "durability": ["replicas", "all"],
    "durability_timeout_ms": ["0", "10001"],
    "workers": ["0", "129"],
    "shutdown_timeout_s": ["0", "3601", "nan"],
    "header_timeout_s": ["0", "301", "inf"],
    "keepalive_timeout_s": ["0", "3601"],
    "max_in_flight": ["0", "100001", "many"],
    "model_calls_per_config": ["0", "100001", "1.5"],
    "message_delay_ms": ["-1", "600001"],
    "hold_shares": ["0", "65", "half"],
    "key_prefix": ["a{b}", "k" * 33, "has space"],
    "log_format": ["xml"],
    "log_level": ["verbose"],
    "max_body_bytes": ["1023", str(64 * 1024 * 1024 + 1)],
    "max_content_chars": ["0", "1000001"],
    "provider": ["anthropic"],
    "openai_base_url": ["not-a-url", "ftp://example.com/v1", "https://example.com/v1?x=1", "https://"],
    "openai_api_key": ["sk x", "k" * 4097],
    "openai_model": ["gpt 4", "m" * 257],
    "openai_connect_timeout_s": ["0", "301"],
    "openai_pool_size": ["0", "10001", "many"],
    "openai_pool_wait_s": ["0", "61", "soon"],
    "openai_read_timeout_s": ["0", "3601"],
    "openai_total_timeout_s": ["0", "3601"],
    "openai_max_retries": ["-1", "11"],
    "openai_retry_backoff_s": ["-0.1", "61"],
    "max_output_tokens": ["0", "1000001"],
    "history_messages": ["-1", "1001"],
    "history_tokens": ["-1", "2000001"],
    "reservation_ttl_s": ["1e30", "1" + "0" * 30, "0", "7201"],
    "auth_cache_ttl_s": ["1e9", "-1", "61"],
    "admin_token": ["x", "fifteen-chars-x", "a token with spaces"],
    "cors_origins": ["example.com", "https://a.example/path", "*,ftp://x"],
    "demo_api_key": ["has space", "cl\u00e9"],
    "widget_api_key": ["has space", "k" * 513],
    "widget_token_limit": ["0", "1e13"],
    "deleted_chat_retention_s": ["-1", "1e10", "nan"],
    "retention_interval_s": ["0", "0.01", "86401"],
}
CASES = [pytest.param(name, value, id=f"{env_name(name)}={value[:20]}") for name in FIELDS
         for value in OUT_OF_RANGE.get(name, [])]  # fmt: skip


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`chatledger serve` in a clean environment plus `env` (on a free port unless `env` names one);
    bounded, so a serve that wrongly starts fails the test."""
    (port,) = free_ports(1)
    env = {"CHATLEDGER_PORT": str(port), **env}
    redis_urls = ("REDIS_URL", "REDIS_CLUSTER_URL", "REDIS_SENTINEL_URL")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_") and k not in redis_urls}
    command = [sys.executable, "-m", "service", "serve"]
    return subprocess.run(
        command, env={**clean, **env}, capture_output=True, text=True, timeout=SERVE_BOUND_S, cwd=ROOT
    )


class TestEverySettingHasARange:
    def test_every_setting_has_out_of_range_cases(self) -> None:
        """A new setting must come with values outside its range here."""
        assert sorted(OUT_OF_RANGE) == sorted(FIELDS)
        assert all(OUT_OF_RANGE.values())

    @pytest.mark.parametrize("name", FIELDS)
    def test_every_setting_states_its_range_and_its_default_is_in_it(self, name: str) -> None:
        """Each setting has a range in words (numbers bounded both ways), and its default, set
        explicitly, is accepted."""
        assert describe_range(name)
        default = {f.name: f.default for f in msgspec.structs.fields(Settings)}[name]
        if default is not None and default != "":
            assert getattr(settings_from_env({env_name(name): str(default)}), name) == default

    @pytest.mark.parametrize(("name", "value"), CASES)
    def test_a_value_outside_the_range_is_refused_naming_the_variable_and_range(
        self, name: str, value: str
    ) -> None:
        """settings_from_env refuses it; the message names the variable and states the range."""
        with pytest.raises(SettingsError) as refused:
            settings_from_env({env_name(name): value})
        message = str(refused.value)
        assert message.startswith(env_name(name))
        assert describe_range(name) in message

    def test_secrets_are_not_repeated(self) -> None:
        """A refused key, token or Redis URL (which may hold a password) is not echoed."""
        secret = "sk with-a-space-in-it"
        with pytest.raises(SettingsError) as refused:
            settings_from_env({"CHATLEDGER_OPENAI_API_KEY": secret, "REDIS_URL": "http://:pw-123@x"})
        assert secret not in str(refused.value)
        assert "pw-123" not in str(refused.value)


class TestCrossFieldChecks:
    def test_the_hold_must_outlive_the_model_call(self) -> None:
        """With the openai provider, a hold no longer than the model's total timeout is refused: the
        reply would outlive its hold and be lost."""
        env = {"CHATLEDGER_PROVIDER": "openai", "CHATLEDGER_OPENAI_MODEL": "m",
               "CHATLEDGER_RESERVATION_TTL_S": "90", "CHATLEDGER_OPENAI_TOTAL_TIMEOUT_S": "90"}  # fmt: skip
        with pytest.raises(SettingsError, match="CHATLEDGER_RESERVATION_TTL_S=90 must be above"):
            settings_from_env(env)
        assert settings_from_env({**env, "CHATLEDGER_RESERVATION_TTL_S": "91"}).reservation_ttl_s == 91
        # The offline model has no upstream timeout to outlive.
        assert settings_from_env({**env, "CHATLEDGER_PROVIDER": "offline"}).reservation_ttl_s == 90

    def test_the_body_limit_must_fit_the_longest_content(self) -> None:
        """A body limit below what the longest allowed message needs (4 bytes a character) is refused."""
        with pytest.raises(SettingsError, match="CHATLEDGER_MAX_BODY_BYTES=65535 must be at least 65536"):
            settings_from_env({"CHATLEDGER_MAX_CONTENT_CHARS": "16128", "CHATLEDGER_MAX_BODY_BYTES": "65535"})

    def test_one_redis_and_a_model_for_openai(self) -> None:
        """REDIS_URL and REDIS_CLUSTER_URL together, or `openai` without a model, are refused."""
        assert cross_field_problems(Settings(redis_url="redis://a", redis_cluster_url="redis://b"))
        assert cross_field_problems(Settings(provider="openai", openai_model=""))
        assert cross_field_problems(Settings()) == []


@pytest.mark.slow
class TestServeStops:
    @pytest.mark.parametrize(
        ("variable", "value", "range_words"),
        [
            ("CHATLEDGER_RESERVATION_TTL_S", "1" + "0" * 30, "an integer from 1 to 7200"),
            ("CHATLEDGER_AUTH_CACHE_TTL_S", "1e9", "a number from 0 to 60"),
            ("CHATLEDGER_OPENAI_BASE_URL", "not-a-url", "an `http://` or `https://` URL"),
            ("CHATLEDGER_ADMIN_TOKEN", "x", "16 to 512 visible ASCII characters"),
            ("REDIS_URL", "http://localhost:6379", "a `redis://`, `rediss://` or `unix://` URL"),
            ("CHATLEDGER_HEADER_TIMEOUT_S", "0", "a number above 0 and at most 300"),
        ],
    )
    def test_serve_exits_at_once_naming_the_variable_and_range(
        self, variable: str, value: str, range_words: str
    ) -> None:
        """The real `chatledger serve` exits 2 before listening, with one line naming the variable."""
        ran = serve({variable: value})
        assert ran.returncode == 2, ran.stderr
        assert "Running on" not in ran.stderr
        (line,) = ran.stderr.splitlines()
        assert line.startswith(f"chatledger: {variable}")
        assert range_words in line

    def test_serve_names_every_setting_out_of_range_at_once(self) -> None:
        """Every setting set outside its range together: serve exits 2 with one line per variable."""
        ran = serve({env_name(name): values[0] for name, values in OUT_OF_RANGE.items()})
        assert ran.returncode == 2, ran.stderr
        named = [line.split(" ")[1].split("=")[0] for line in ran.stderr.splitlines()]
        assert sorted(named) == sorted(env_name(name) for name in FIELDS)

    def test_serve_refuses_a_hold_shorter_than_the_model_call(self) -> None:
        """A cross-field refusal stops the real serve too."""
        ran = serve({"CHATLEDGER_PROVIDER": "openai", "CHATLEDGER_OPENAI_MODEL": "m",
                     "CHATLEDGER_RESERVATION_TTL_S": "60"})  # fmt: skip
        assert ran.returncode == 2
        assert (
            "CHATLEDGER_RESERVATION_TTL_S=60 must be above CHATLEDGER_OPENAI_TOTAL_TIMEOUT_S=90" in ran.stderr
        )


class TestShippedValues:
    def test_the_deploy_settings_are_in_range(self) -> None:
        """The Kubernetes ConfigMap and Secret, and compose's worker environment, pass the checks."""
        env: dict[str, Any] = {}
        for name in ("configmap.yaml", "secret.yaml"):
            document = yaml.safe_load((ROOT / "deploy" / "k8s" / name).read_text())
            env.update(document.get("data") or document.get("stringData"))
        compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
        env.update(compose["x-worker"]["environment"])
        assert settings_from_env({k: str(v) for k, v in env.items()}).redis_url is not None

    def test_docs_configuration_lists_every_setting(self) -> None:
        """docs/configuration.md holds the table the Settings fields make: every variable, its type,
        range, default and meaning."""
        document = (ROOT / "docs" / "configuration.md").read_text()
        assert reference_table() in document, "regenerate the table with service.settings.reference_table()"
        for name in FIELDS:
            assert f"`{env_name(name)}`" in document
