"""The three kinds of Redis (one node, Cluster, Sentinel) and the durability setting, as settings read
them: one kind at a time, a Sentinel URL parsed as documented, `replica` refused without a Redis."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
import yaml

from ledger import Durability, SentinelTarget
from service import cli
from service.settings import SettingsError, settings_from_env

ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "REDIS_URL": "redis://127.0.0.1:6380/0",
    "REDIS_CLUSTER_URL": "redis://127.0.0.1:7000",
    "REDIS_SENTINEL_URL": "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/chatledger",
}


class TestSentinelUrl:
    def test_hosts_service_database_and_password(self) -> None:
        target = SentinelTarget("redis+sentinel://:s%40cret@a.example:26379,[::1]:26380,b:1/my-primary/3")
        assert target.sentinels == [("a.example", 26379), ("::1", 26380), ("b", 1)]
        assert (target.service, target.db, target.password, target.username) == (
            "my-primary",
            3,
            "s@cret",
            "",
        )

    def test_the_database_defaults_to_0_and_the_password_to_none(self) -> None:
        target = SentinelTarget("redis+sentinel://a:26379/svc")
        assert (target.service, target.db, target.password) == ("svc", 0, None)

    @pytest.mark.parametrize(
        "url",
        ["redis://a:26379/svc", "redis+sentinel://a:26379", "redis+sentinel://a:26379/", "redis+sentinel://a/svc",
         "redis+sentinel://a:99999/svc", "redis+sentinel://a:1/svc/x", "redis+sentinel://a:1/s vc"],
    )  # fmt: skip
    def test_what_is_not_a_sentinel_url(self, url: str) -> None:
        with pytest.raises(ValueError, match=r"redis\+sentinel://|service name|host:port"):
            SentinelTarget(url)


class TestOneKind:
    @pytest.mark.parametrize("pair", [*list(combinations(KINDS, 2)), tuple(KINDS)], ids=lambda p: "+".join(p))
    def test_two_kinds_are_refused(self, pair: tuple[str, ...]) -> None:
        with pytest.raises(
            SettingsError, match="set one of REDIS_URL, REDIS_CLUSTER_URL and REDIS_SENTINEL_URL"
        ):
            settings_from_env({name: KINDS[name] for name in pair})

    @pytest.mark.parametrize("name", list(KINDS))
    def test_each_kind_alone_is_a_real_redis(self, name: str) -> None:
        settings = settings_from_env({name: KINDS[name], "CHATLEDGER_DURABILITY": "replica"})
        assert not settings.embedded
        assert settings.durability_wait == Durability(1, 1000)

    def test_replica_durability_needs_a_redis(self) -> None:
        with pytest.raises(SettingsError, match="CHATLEDGER_DURABILITY=replica needs a Redis with replicas"):
            settings_from_env({"CHATLEDGER_DURABILITY": "replica"})
        assert settings_from_env({}).durability_wait is None

    def test_serve_exits_2_on_two_kinds(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Refused before anything starts, with the status of every other bad setting."""
        monkeypatch.setenv("REDIS_URL", KINDS["REDIS_URL"])
        monkeypatch.setenv("REDIS_SENTINEL_URL", KINDS["REDIS_SENTINEL_URL"])
        assert cli.main(["serve"]) == 2
        assert "not both REDIS_URL and REDIS_SENTINEL_URL" in capsys.readouterr().err

    def test_the_sentinel_compose_file_names_one_kind(self) -> None:
        """deploy/compose.sentinel.yaml's worker settings, over compose.yaml's, are valid together."""
        base = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
        extra = yaml.safe_load((ROOT / "deploy" / "compose.sentinel.yaml").read_text())
        environment = {
            **base["services"]["worker1"]["environment"],
            **extra["services"]["worker1"]["environment"],
        }
        settings = settings_from_env(environment)
        assert settings.redis_sentinel_url is not None
        assert settings.durability == "replica"
        assert SentinelTarget(settings.redis_sentinel_url).service == "chatledger"
