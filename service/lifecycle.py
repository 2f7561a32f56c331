"""Cleanup contexts: each resource starts in order at startup and closes in reverse at shutdown, and
only what started is closed (aiohttp "Cleanup Context"). Resources already placed in the app by the
caller (tests inject a Redis client or a provider) are used and left to their owner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

import ledger
from service.appkeys import AUTH, EXCHANGE, LEDGER, METRICS, PROVIDER, REDIS, SETTINGS, TENANTS, WIDGET
from service.auth import Authenticator
from service.demo import ensure_demo_config
from service.exchange import Exchange
from service.providers import provider_from_settings
from service.settings import Settings
from service.widget import widget_from_settings

log = structlog.get_logger("chatledger")


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    if REDIS in app:
        yield
        return
    settings = app[SETTINGS]
    if settings.embedded:
        app[REDIS] = ledger.embedded_redis()
        log.warning(
            "embedded_redis",
            note="No REDIS_URL: running on an in-process Redis (fakeredis with Lua). "
            "Single process only; every chat is lost when it exits. Set REDIS_URL for real use.",
        )
    else:
        app[REDIS] = connect_redis(settings)
    try:
        yield
    finally:
        await app[REDIS].aclose()


def connect_redis(settings: Settings) -> ledger.RedisClient:
    """The client the settings name: a Redis Cluster when REDIS_CLUSTER_URL is set, the primary the
    sentinels name with REDIS_SENTINEL_URL, else REDIS_URL's node. Setting two kinds is refused before
    this is called (service/cli.py)."""
    durability = settings.durability_wait
    if settings.redis_cluster_url is not None:
        log.info(
            "redis_cluster", url=_without_password(settings.redis_cluster_url), durability=settings.durability
        )
        return ledger.connect_cluster(settings.redis_cluster_url, durability=durability)
    if settings.redis_sentinel_url is not None:
        log.info(
            "redis_sentinel",
            url=_without_password(settings.redis_sentinel_url),
            durability=settings.durability,
        )
        return ledger.connect_sentinel(settings.redis_sentinel_url, durability=durability)
    assert settings.redis_url is not None, "embedded mode has no Redis URL"
    log.info("redis", url=_without_password(settings.redis_url), durability=settings.durability)
    return ledger.connect(settings.redis_url, durability=durability)


async def ledger_and_tenants(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    keys = ledger.Keyspace(settings.key_prefix)
    app[LEDGER] = ledger.Ledger(app[REDIS], keys, settings.ledger_limits())
    app[TENANTS] = ledger.TenantStore(app[REDIS], keys)
    app[LEDGER].scripts.observe = app[TENANTS].scripts.observe = app[METRICS].observe_script
    app[AUTH] = Authenticator(app[TENANTS], settings.auth_cache_ttl_s)
    # Loads every script now: a broken script or an unreachable Redis fails the boot, not a request.
    await app[LEDGER].start()
    demo_api_key = await ensure_demo_config(app[TENANTS], settings) if settings.embedded else None
    app[WIDGET] = widget_from_settings(settings, demo_api_key or settings.demo_api_key)
    if app[WIDGET] is not None:
        log.info("widget", path=f"{settings.api_prefix}/widget/", token_limit=settings.widget_token_limit)
    yield


async def model_provider(app: web.Application) -> AsyncIterator[None]:
    """The model provider, and with it the process's one pooled HTTP session to the upstream, which
    `close()` ends at shutdown (design.md section 8)."""
    owned = PROVIDER not in app
    settings = app[SETTINGS]
    if owned:
        app[PROVIDER] = provider_from_settings(settings)
    provider = app[PROVIDER]
    if provider.name == "offline":
        log.warning(
            "offline_model", note="Replies come from the built-in offline model, which is not an LLM."
        )
    elif owned and settings.provider == "openai":
        # The base URL and model only: never the API key.
        # A total timeout at or above the hold's deadline is refused at start (settings.py).
        log.info("model", provider="openai", base_url=settings.openai_base_url, model=settings.openai_model)
    app[EXCHANGE] = Exchange(app[LEDGER], provider, app[SETTINGS], app[METRICS])
    try:
        yield
    finally:
        if owned:
            await provider.close()


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.split('@', 1)[1]}"
