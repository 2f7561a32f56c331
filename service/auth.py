"""X-API-Key -> the caller's config, through a bounded in-process cache.

A key is looked up by its SHA-256 digest (the only form Redis holds). A resolved key and its config are
trusted for `ttl_s`, which keeps auth off the message hot path (design.md section 4) and bounds how late a
revocation or a config change takes effect on any worker. Failures are not cached, so a new key works at
once.
"""

from __future__ import annotations

import hashlib
import time

import msgspec
import structlog
from aiohttp import web

import ledger
from service.errors import ApiError
from service.settings import API_KEY_RE

API_KEY_HEADER = "X-API-Key"
# Distinct keys remembered per worker; beyond it the least recently used ones are looked up again.
CACHE_KEYS_MAX = 10_000


class Tenant(msgspec.Struct, frozen=True):
    config: ledger.ConfigRecord

    @property
    def config_id(self) -> str:
        return self.config.config_id


class Authenticator:
    def __init__(self, tenants: ledger.TenantStore, ttl_s: float) -> None:
        self._tenants = tenants
        self._cache = _KeyCache(ttl_s) if ttl_s > 0 else None

    async def tenant(self, request: web.Request) -> Tenant:
        """The caller's tenant; 401 for a missing or unknown key, 404 when its config is gone, 429 when
        the key is over its config's rate (a third round trip, only for configs with a limit)."""
        api_key = request.headers.get(API_KEY_HEADER, "").strip()
        if not api_key:
            raise ApiError(401, "missing_api_key", f"The {API_KEY_HEADER} header is required.")
        # Every key chatledger issues or pins from its settings is visible ASCII, so anything else is
        # refused before it is hashed: aiohttp hands a header's non-UTF-8 bytes over as lone
        # surrogates, which cannot even be encoded, let alone match a key.
        if not API_KEY_RE.fullmatch(api_key):
            raise _invalid_key()
        return await self.tenant_for_key(api_key)

    async def tenant_for_key(self, api_key: str) -> Tenant:
        """Like `tenant`, for a key the server holds itself (the chat widget's, service/widget/), so
        its cache and its rate limit are the same as for a key a client sends."""
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        tenant = self._cache.get(digest) if self._cache is not None else None
        if tenant is None:
            tenant = await self._load(api_key)
            if self._cache is not None:
                self._cache.put(digest, tenant)
        structlog.contextvars.bind_contextvars(config_id=tenant.config_id)
        config = tenant.config
        if config.rate_limit_per_s > 0:
            wait_s = await self._tenants.rate_limit(digest, config.rate_limit_per_s, config.rate_limit_burst)
            if wait_s is not None:
                raise ApiError(
                    429, "rate_limited", "Too many requests for this API key.", retry_after_s=wait_s
                )
        return tenant

    async def _load(self, api_key: str) -> Tenant:
        config_id = await self._tenants.resolve_key(api_key)
        if config_id is None:
            raise _invalid_key()
        config = await self._tenants.get_config(config_id)
        if config is None:
            raise ledger.ConfigNotFound()
        return Tenant(config=config)


def _invalid_key() -> ApiError:
    return ApiError(401, "invalid_api_key", "The API key is not valid.")


class _KeyCache:
    """Resolved keys by digest, each trusted for `ttl_s`, at most CACHE_KEYS_MAX of them.

    A dict in insertion order: every entry lives the same `ttl_s` and a refresh moves it to the end,
    so the oldest entries, the first to expire, are at the front, and eviction pops from there. Every
    request pays for a hit, so it is a dict lookup and a clock read, not a cache library's bookkeeping."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[Tenant, float]] = {}

    def get(self, digest: str) -> Tenant | None:
        entry = self._entries.get(digest)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def put(self, digest: str, tenant: Tenant) -> None:
        entries = self._entries
        entries.pop(digest, None)
        now = time.monotonic()
        while entries:
            oldest = next(iter(entries))
            if len(entries) < CACHE_KEYS_MAX and entries[oldest][1] > now:
                break
            del entries[oldest]
        entries[digest] = (tenant, now + self._ttl_s)
