"""Every typed key of shared application and request state (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

from aiohttp import web

from ledger import Ledger, RedisClient, TenantStore
from service.admission import Admission
from service.auth import Authenticator
from service.exchange import Exchange
from service.metrics import Metrics
from service.model_calls import ModelCalls
from service.providers import Provider
from service.settings import Settings
from service.widget import Widget

SETTINGS = web.AppKey("settings", Settings)
# A union is no runtime type, so this key is typed by annotation.
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
LEDGER = web.AppKey("ledger", Ledger)
TENANTS = web.AppKey("tenants", TenantStore)
AUTH = web.AppKey("auth", Authenticator)
PROVIDER = web.AppKey("provider", Provider)
EXCHANGE = web.AppKey("exchange", Exchange)
METRICS = web.AppKey("metrics", Metrics)
ADMISSION = web.AppKey("admission", Admission)
MODEL_CALLS = web.AppKey("model_calls", ModelCalls)
# The chat widget; None when it has no key and its routes answer 404.
WIDGET: web.AppKey[Widget | None] = web.AppKey("widget")

REQUEST_ID = web.RequestKey("request_id", str)
