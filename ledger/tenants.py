"""Configs (tenants) and their API keys (design.md section 7).

Keys are random, shown once, and stored only as SHA-256 digests: a read of Redis never yields a usable
key. Each config keeps a hash of its keys' descriptions (id, visible prefix, creation time) so keys can be
listed and revoked without ever storing them. Config and key records live on different slots; each
multi-key change is ordered so a crash leaves only a harmless leftover.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any, cast

import msgspec

from ledger.connection import RedisClient
from ledger.errors import ConfigNotFound, wrap_redis_errors
from ledger.keys import Keyspace
from ledger.replies import decode_rate_limit
from ledger.results import ConfigRecord, IssuedKey, KeyInfo
from ledger.scripts import Scripts

API_KEY_PREFIX = "clk_"
# The key id shown in listings: enough of the digest to be unique per config, useless to authenticate.
KEY_ID_CHARS = 16
# Characters of the key itself shown in listings so an operator can tell keys apart.
KEY_VISIBLE_CHARS = 8

_CONFIG_DECODER = msgspec.json.Decoder(ConfigRecord)


class _StoredKey(msgspec.Struct, frozen=True):
    digest: str
    prefix: str
    created_ms: int


_STORED_KEY_DECODER = msgspec.json.Decoder(_StoredKey)


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class TenantStore:
    def __init__(self, redis: RedisClient, keys: Keyspace) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts(redis)

    # --- configs ---------------------------------------------------------------------------------------
    @wrap_redis_errors
    async def create_config(self, *, agent_name: str, company_name: str, **fields: Any) -> ConfigRecord:
        """A new config with a fresh id; `fields` are the other ConfigRecord fields."""
        now_ms = int(time.time() * 1000)
        record = ConfigRecord(
            config_id=str(uuid.uuid4()),
            agent_name=agent_name,
            company_name=company_name,
            created_ms=now_ms,
            updated_ms=now_ms,
            **fields,
        )
        # The record first, then the index: a crash leaves an unlisted config, never a listed ghost.
        await self.redis.set(self.keys.config_record(record.config_id), msgspec.json.encode(record))
        await self.redis.sadd(self.keys.configs(), record.config_id)
        return record

    @wrap_redis_errors
    async def get_config(self, config_id: str) -> ConfigRecord | None:
        raw = await self.redis.get(self.keys.config_record(config_id))
        return None if raw is None else _CONFIG_DECODER.decode(raw)

    @wrap_redis_errors
    async def update_config(self, config_id: str, **fields: Any) -> ConfigRecord:
        """Change some fields of a config; the last write wins (an operator action, not a hot path).
        Workers see the change when their auth cache entry for a key of this config expires."""
        record = await self.get_config(config_id)
        if record is None:
            raise ConfigNotFound()
        updated = msgspec.structs.replace(record, **fields, updated_ms=int(time.time() * 1000))
        await self.redis.set(self.keys.config_record(config_id), msgspec.json.encode(updated))
        return updated

    @wrap_redis_errors
    async def delete_config(self, config_id: str) -> bool:
        """Delete a config and revoke all its keys; its chats are kept (soft data) but no key reaches
        them any more. Keys go first, so a crash midway leaves a config nobody can use, never a key
        to a config that is gone."""
        stored = cast(dict[str, str], await self.redis.hgetall(self.keys.config_api_keys(config_id)))
        for raw in stored.values():
            await self.redis.delete(self.keys.api_key(_STORED_KEY_DECODER.decode(raw).digest))
        await self.redis.delete(self.keys.config_api_keys(config_id))
        deleted = bool(await self.redis.delete(self.keys.config_record(config_id)))
        await self.redis.srem(self.keys.configs(), config_id)
        return deleted

    @wrap_redis_errors
    async def list_config_ids(self) -> list[str]:
        return sorted(cast(set[str], await self.redis.smembers(self.keys.configs())))

    # --- API keys -------------------------------------------------------------------------------------
    @wrap_redis_errors
    async def issue_key(self, config_id: str, *, api_key: str | None = None) -> IssuedKey:
        """A new key for an existing config: random unless `api_key` pins it (the demo's setting).
        The description is written before the key itself, so a key that works is always listed (and
        so revocable)."""
        if not await self.redis.exists(self.keys.config_record(config_id)):
            raise ConfigNotFound()
        api_key = api_key or API_KEY_PREFIX + secrets.token_urlsafe(32)
        digest = key_digest(api_key)
        key_id = digest[:KEY_ID_CHARS]
        created_ms = int(time.time() * 1000)
        stored = _StoredKey(digest=digest, prefix=api_key[:KEY_VISIBLE_CHARS], created_ms=created_ms)
        await self.redis.hset(self.keys.config_api_keys(config_id), key_id, msgspec.json.encode(stored))
        await self.redis.set(self.keys.api_key(digest), config_id)
        return IssuedKey(api_key=api_key, key_id=key_id, config_id=config_id, created_ms=created_ms)

    @wrap_redis_errors
    async def resolve_key(self, api_key: str) -> str | None:
        """The config id an API key belongs to, or None for an unknown or revoked key."""
        return cast(str | None, await self.redis.get(self.keys.api_key(key_digest(api_key))))

    @wrap_redis_errors
    async def list_keys(self, config_id: str) -> list[KeyInfo]:
        stored = cast(dict[str, str], await self.redis.hgetall(self.keys.config_api_keys(config_id)))
        infos = []
        for key_id, raw in stored.items():
            record = _STORED_KEY_DECODER.decode(raw)
            infos.append(KeyInfo(key_id=key_id, prefix=record.prefix, created_ms=record.created_ms))
        return sorted(infos, key=lambda info: info.created_ms)

    @wrap_redis_errors
    async def revoke_key(self, config_id: str, key_id: str) -> bool:
        """Revoke by key id; False when the config has no such key. The key stops working first, then
        its description goes: a crash in between leaves a listed key that no longer authenticates."""
        raw = await self.redis.hget(self.keys.config_api_keys(config_id), key_id)
        if raw is None:
            return False
        await self.redis.delete(self.keys.api_key(_STORED_KEY_DECODER.decode(raw).digest))
        await self.redis.hdel(self.keys.config_api_keys(config_id), key_id)
        return True

    @wrap_redis_errors
    async def rate_limit(self, digest: str, per_s: float, burst: int) -> float | None:
        """Count one request of the key with this digest; None when allowed, else the seconds to wait.
        Atomic in Redis (one GCRA script on the key's own slot), so the limit holds across workers."""
        interval_us = max(1, round(1_000_000 / per_s))
        reply = await self.scripts.call(
            "rate_limit", keys=[self.keys.api_key_rate(digest)], args=[interval_us, max(1, burst)]
        )
        metered = decode_rate_limit(reply)
        return None if metered.allowed else metered.retry_after_ms / 1000

    @wrap_redis_errors
    async def revoke_key_value(self, api_key: str) -> bool:
        """Revoke a key given its plain value (what a user holding a leaked key can name)."""
        config_id = await self.resolve_key(api_key)
        if config_id is None:
            return False
        return await self.revoke_key(config_id, key_digest(api_key)[:KEY_ID_CHARS])
