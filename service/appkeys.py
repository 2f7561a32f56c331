"""Every typed key of shared application and request state (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from ledger import Ledger, TenantStore
from service.auth import Authenticator
from service.exchange import Exchange
from service.providers import Provider
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
LEDGER = web.AppKey("ledger", Ledger)
TENANTS = web.AppKey("tenants", TenantStore)
AUTH = web.AppKey("auth", Authenticator)
PROVIDER = web.AppKey("provider", Provider)
EXCHANGE = web.AppKey("exchange", Exchange)

REQUEST_ID = web.RequestKey("request_id", str)
