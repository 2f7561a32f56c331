"""Settings from environment variables: the only module that reads os.environ.

Every field `name` is read from `CHATLEDGER_<NAME>`, except `redis_url` and `redis_cluster_url`, which
are the conventional `REDIS_URL` and `REDIS_CLUSTER_URL`. Values are parsed by msgspec, so
`CHATLEDGER_PORT=abc` fails at start with a clear message.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from ledger import AMOUNT_TOKENS_MAX, LedgerLimits

Positive = Annotated[int, msgspec.Meta(ge=1)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # Mount point of the API, e.g. `/micro-apps/for-api-providers/chat-service` (api.md Part A).
    base_path: str = ""
    # Unset: the embedded in-process Redis (fakeredis), data lost on exit (design.md section 9).
    redis_url: str | None = None
    # A Redis Cluster, given any one node's URL: the cluster client instead of REDIS_URL (issue 5).
    redis_cluster_url: str | None = None
    # `serve` processes sharing the port (SO_REUSEPORT); more than one needs a real Redis (issue 5).
    workers: Positive = 1
    # On SIGTERM a worker stops accepting, then gives in-flight requests this long before cancelling them
    # (above 0: aiohttp reads 0 as "no limit").
    shutdown_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Test and demo only: each message request waits this long before it is handled (service/delay.py).
    message_delay_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    key_prefix: str = "cl"
    # 'auto' is a readable console log on a terminal and JSON lines otherwise (production).
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Bodies above this are refused with 413; contents above max_content_chars with 422 (api.md B 5).
    max_body_bytes: Positive = 1024 * 1024
    max_content_chars: Positive = 16_000
    # 'offline' is the built-in deterministic model; 'openai' any OpenAI-compatible endpoint (issue 3).
    provider: Literal["offline", "openai"] = "offline"
    # The OpenAI-compatible upstream: POST {openai_base_url}/chat/completions with a Bearer key (unset
    # for servers that need none, e.g. Ollama). A config's own `model` overrides openai_model.
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = None
    openai_model: str = ""
    # Seconds to connect, to wait for each read (the first byte included), and for the whole exchange
    # with its retries; keep the total below reservation_ttl_s so a hold never expires under a call.
    openai_connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    openai_read_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    openai_total_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 90.0
    # Retries of a failed attempt (connect error, timeout, 408/409/429/5xx), only before the first byte.
    openai_max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    # The first retry waits this long, each next one twice as long (capped at a few seconds).
    openai_retry_backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    # Reply tokens asked of the model when the config does not say.
    max_output_tokens: Positive = 512
    # The history sent as context: at most this many messages and this many tokens, newest first.
    history_messages: Annotated[int, msgspec.Meta(ge=0)] = 20
    history_tokens: Annotated[int, msgspec.Meta(ge=0)] = 4000
    # A hold outlives the longest model call; only a dead worker's hold expires (design.md section 4).
    reservation_ttl_s: Positive = 120
    # How long a worker trusts a resolved API key: the bound on how late a revocation takes effect.
    auth_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    # The admin API's bearer token (/admin/...); unset, the admin API is off and answers 404.
    admin_token: str | None = None
    # Origins allowed to call the API from a browser (CORS), comma-separated; '*' allows any.
    cors_origins: str = ""
    # The demo config's key in embedded mode; unset, a random one is made and logged at start.
    demo_api_key: str | None = None
    # The chat widget's server-side API key (issue 8, service/widget/); unset, the widget routes answer
    # 404, except on the embedded default, which uses the demo key. The browser never sees it.
    widget_api_key: str | None = None
    # The budget, in tokens, of each chat the widget creates.
    widget_token_limit: Annotated[float, msgspec.Meta(gt=0, le=AMOUNT_TOKENS_MAX)] = 1000.0

    @property
    def cors_origin_list(self) -> frozenset[str]:
        return _origin_list(self.cors_origins)

    @property
    def embedded(self) -> bool:
        return self.redis_url is None and self.redis_cluster_url is None

    def ledger_limits(self) -> LedgerLimits:
        return LedgerLimits(reservation_ttl_ms=self.reservation_ttl_s * 1000)

    @property
    def api_prefix(self) -> str:
        """The base path without a trailing slash: '' or '/some/path'."""
        stripped = self.base_path.strip().rstrip("/")
        return "" if not stripped else "/" + stripped.lstrip("/")


@functools.lru_cache(maxsize=8)
def _origin_list(cors_origins: str) -> frozenset[str]:
    """The origins of CHATLEDGER_CORS_ORIGINS, parsed once: a browser's request reads them twice."""
    return frozenset(origin.strip() for origin in cors_origins.split(",") if origin.strip())


def env_name(field: str) -> str:
    return field.upper() if field in ("redis_url", "redis_cluster_url") else f"CHATLEDGER_{field.upper()}"


class SettingsError(ValueError):
    """A setting from the environment could not be parsed; the message names the variable."""


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from the environment, then `overrides` (the CLI's flags) on top."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        value = env.get(env_name(field))
        if value is not None and value != "":
            raw[field] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("$.", 1)[-1].rstrip("`")
        raise SettingsError(f"{env_name(field)}: {exc}") from exc
