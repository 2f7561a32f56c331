"""create_app(settings) -> web.Application: middlewares, routes and resources, no globals."""

from __future__ import annotations

from aiohttp import web

from ledger import RedisClient
from service import handlers, lifecycle, retention
from service.admission import Admission
from service.appkeys import ADMISSION, METRICS, MODEL_CALLS, PROVIDER, REDIS, SETTINGS
from service.metrics import Metrics
from service.middlewares import request_context
from service.model_calls import ModelCalls
from service.providers import Provider
from service.routing import mount
from service.settings import Settings


def create_app(
    settings: Settings, *, redis: RedisClient | None = None, provider: Provider | None = None
) -> web.Application:
    """The application. `redis` and `provider`, when given, are used instead of those the settings
    name, and are not closed by the app (tests own them)."""
    app = web.Application(middlewares=[request_context], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[ADMISSION] = Admission(settings.max_in_flight, settings.api_prefix)
    app[MODEL_CALLS] = ModelCalls(
        settings.model_calls_per_config,
        app[METRICS].model_calls_refused,
        shared=settings.provider != "offline",
    )
    if redis is not None:
        app[REDIS] = redis
    if provider is not None:
        app[PROVIDER] = provider
    app.cleanup_ctx.extend([lifecycle.redis_client, lifecycle.ledger_and_tenants, lifecycle.model_provider])
    app.cleanup_ctx.append(retention.retention_pass)
    mount(app, handlers.all_routes(), settings.api_prefix)
    return app
