"""Configs and API keys: keys are shown once and stored only as digests (design.md section 7)."""

from __future__ import annotations

import uuid
from typing import cast

import pytest
from redis.asyncio import Redis

from ledger import ConfigNotFound, ConfigRecord, Keyspace, TenantStore
from ledger.tenants import API_KEY_PREFIX, key_digest
from tests.redis_servers import count_keys


async def everything_stored(redis: Redis) -> list[str]:
    """Every key name and every stored string in the database, whatever its type."""
    found: list[str] = []
    async for key in redis.scan_iter(count=100):
        found.append(key)
        found.extend(await _values(redis, key))
    return found


async def _values(redis: Redis, key: str) -> list[str]:
    # The client decodes responses, so every name and value is a str.
    kind = await redis.type(key)
    if kind == "string":
        return [cast(str, await redis.get(key))]
    if kind == "hash":
        fields = cast(dict[str, str], await redis.hgetall(key))
        return [text for pair in fields.items() for text in pair]
    if kind == "set":
        return list(cast(set[str], await redis.smembers(key)))
    if kind == "zset":
        return cast(list[str], await redis.zrange(key, 0, -1))
    if kind == "list":
        return cast(list[str], await redis.lrange(key, 0, -1))
    if kind == "stream":
        entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(key))
        return [text for entry_id, fields in entries for text in (entry_id, *fields.keys(), *fields.values())]
    raise AssertionError(f"unexpected type {kind!r} of {key}")


class TestConfigs:
    async def test_create_and_get(self, tenants: TenantStore) -> None:
        """A created config reads back equal, with a fresh UUID and the given fields."""
        created = await tenants.create_config(
            agent_name="Support Pro",
            company_name="Your Company Inc.",
            welcome_message="Hi!",
            prompt_weight_milli=1500,
            completion_weight_milli=2000,
            is_full_width=True,
        )
        assert uuid.UUID(created.config_id).version == 4
        assert (created.agent_name, created.company_name) == ("Support Pro", "Your Company Inc.")
        assert (created.prompt_weight_milli, created.completion_weight_milli) == (1500, 2000)
        assert created.created_ms == created.updated_ms > 0
        assert await tenants.get_config(created.config_id) == created

    async def test_defaults(self, config: ConfigRecord) -> None:
        """Unset fields take the API's defaults, weights of 1.0 included."""
        assert config.primary_color == "#1A73E8"
        assert (config.prompt_weight_milli, config.completion_weight_milli) == (1000, 1000)
        assert config.is_full_width is False

    async def test_unknown_config(self, tenants: TenantStore) -> None:
        """A config id that names nothing reads as None."""
        assert await tenants.get_config(str(uuid.uuid4())) is None

    async def test_listed(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """Every created config is listed by id."""
        other = await tenants.create_config(agent_name="B", company_name="B")
        assert await tenants.list_config_ids() == sorted([config.config_id, other.config_id])

    async def test_unknown_field_is_refused(self, tenants: TenantStore) -> None:
        """A field that is not part of a config is a programmer error, not silently stored."""
        with pytest.raises(TypeError):
            await tenants.create_config(agent_name="A", company_name="C", colour="red")


class TestApiKeys:
    async def test_issue_and_resolve(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """An issued key is long, recognizable, and resolves to its config."""
        issued = await tenants.issue_key(config.config_id)
        assert issued.api_key.startswith(API_KEY_PREFIX)
        assert len(issued.api_key) >= len(API_KEY_PREFIX) + 43  # 32 random bytes, URL-safe base64
        assert issued.config_id == config.config_id
        assert issued.key_id == key_digest(issued.api_key)[: len(issued.key_id)]
        assert await tenants.resolve_key(issued.api_key) == config.config_id

    async def test_keys_are_distinct(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """Several keys per config, each different, each working."""
        keys = [await tenants.issue_key(config.config_id) for _ in range(3)]
        assert len({key.api_key for key in keys}) == 3
        assert len({key.key_id for key in keys}) == 3
        for key in keys:
            assert await tenants.resolve_key(key.api_key) == config.config_id

    @pytest.mark.parametrize("api_key", ["", "clk_", "clk_unknown", "x" * 100])
    async def test_unknown_key_resolves_to_none(
        self, tenants: TenantStore, config: ConfigRecord, api_key: str
    ) -> None:
        """A key that was never issued resolves to None."""
        await tenants.issue_key(config.config_id)
        assert await tenants.resolve_key(api_key) is None

    async def test_issue_for_unknown_config(self, tenants: TenantStore, redis_client: Redis) -> None:
        """Issuing a key for a config that does not exist raises ConfigNotFound and stores nothing."""
        with pytest.raises(ConfigNotFound):
            await tenants.issue_key(str(uuid.uuid4()))
        # Counted on every node: a cluster's plain DBSIZE asks one node only.
        assert await count_keys(redis_client) == 0

    async def test_list(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """Listing shows each key's id, visible prefix and creation time, never the key."""
        first = await tenants.issue_key(config.config_id)
        second = await tenants.issue_key(config.config_id)
        listed = await tenants.list_keys(config.config_id)
        assert {info.key_id for info in listed} == {first.key_id, second.key_id}
        by_id = {info.key_id: info for info in listed}
        for issued in (first, second):
            info = by_id[issued.key_id]
            assert issued.api_key.startswith(info.prefix)
            assert info.prefix.startswith(API_KEY_PREFIX)
            assert len(info.prefix) < len(issued.api_key) // 4
            assert info.created_ms == issued.created_ms
        assert [info.created_ms for info in listed] == sorted(info.created_ms for info in listed)

    async def test_keys_are_per_config(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """A config lists only its own keys."""
        other = await tenants.create_config(agent_name="B", company_name="B")
        mine = await tenants.issue_key(config.config_id)
        theirs = await tenants.issue_key(other.config_id)
        assert [info.key_id for info in await tenants.list_keys(config.config_id)] == [mine.key_id]
        assert [info.key_id for info in await tenants.list_keys(other.config_id)] == [theirs.key_id]
        assert await tenants.resolve_key(theirs.api_key) == other.config_id

    async def test_revoke(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """A revoked key stops resolving and leaves the listing; the other keys keep working."""
        revoked = await tenants.issue_key(config.config_id)
        kept = await tenants.issue_key(config.config_id)
        assert await tenants.revoke_key(config.config_id, revoked.key_id) is True
        assert await tenants.resolve_key(revoked.api_key) is None
        assert await tenants.resolve_key(kept.api_key) == config.config_id
        assert [info.key_id for info in await tenants.list_keys(config.config_id)] == [kept.key_id]
        assert await tenants.revoke_key(config.config_id, revoked.key_id) is False

    async def test_revoke_needs_the_owning_config(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """A config cannot revoke another config's key by its id."""
        other = await tenants.create_config(agent_name="B", company_name="B")
        key = await tenants.issue_key(config.config_id)
        assert await tenants.revoke_key(other.config_id, key.key_id) is False
        assert await tenants.resolve_key(key.api_key) == config.config_id

    async def test_revoke_by_value(self, tenants: TenantStore, config: ConfigRecord) -> None:
        """A key can be revoked given its plain value; a second time there is nothing to revoke."""
        key = await tenants.issue_key(config.config_id)
        assert await tenants.revoke_key_value(key.api_key) is True
        assert await tenants.resolve_key(key.api_key) is None
        assert await tenants.list_keys(config.config_id) == []
        assert await tenants.revoke_key_value(key.api_key) is False
        assert await tenants.revoke_key_value("clk_never-issued") is False


class TestKeysAtRest:
    async def test_plain_key_is_never_stored(
        self, tenants: TenantStore, config: ConfigRecord, redis_client: Redis, keyspace: Keyspace
    ) -> None:
        """No key name or value in Redis contains a plain API key or its secret part: only digests."""
        issued = [await tenants.issue_key(config.config_id) for _ in range(3)]
        await tenants.revoke_key(config.config_id, issued[0].key_id)
        stored = await everything_stored(redis_client)
        assert len(stored) > 5
        for key in issued:
            secret = key.api_key.removeprefix(API_KEY_PREFIX)
            assert not any(secret[:16] in value for value in stored), key.api_key
        for key in issued[1:]:
            assert await redis_client.get(keyspace.api_key(key_digest(key.api_key))) == config.config_id

    async def test_the_scan_would_find_a_stored_key(
        self, tenants: TenantStore, config: ConfigRecord, redis_client: Redis
    ) -> None:
        """The at-rest check above does see strings stored in hashes, so its passing means something."""
        issued = await tenants.issue_key(config.config_id)
        await redis_client.hset("leak", "field", f"prefix {issued.api_key} suffix")
        stored = await everything_stored(redis_client)
        assert any(issued.api_key.removeprefix(API_KEY_PREFIX)[:16] in value for value in stored)
