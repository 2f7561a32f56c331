"""Settings from environment variables: the only module that reads os.environ.

Every field `name` is read from `CHATLEDGER_<NAME>`, except the Redis URLs (`_REDIS_FIELDS`), which
are the conventional `REDIS_URL`, `REDIS_CLUSTER_URL` and `REDIS_SENTINEL_URL`. Every field has a type
and a range, written once here as msgspec constraints (or, for what a constraint cannot say, a check
in `_VALUE_CHECKS`): a value outside it stops `chatledger serve` at start with a message naming the
variable and the range, rather than being accepted and failing on some later request. The same
ranges, with each field's description, are the table of docs/configuration.md (`reference_table`,
which a test compares with it).
"""

from __future__ import annotations

import functools
import os
import re
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi

from ledger import AMOUNT_TOKENS_MAX, Durability, LedgerLimits, SentinelTarget

# What an API key, a token or a model name may be: visible ASCII, as an HTTP header carries it intact.
# service/auth.py refuses any X-API-Key outside this before looking it up.
_API_KEY_PATTERN = r"[\x21-\x7e]{1,512}"
API_KEY_RE = re.compile(_API_KEY_PATTERN)
# Bytes a request body needs at most per character of content (UTF-8), plus room for the JSON around it.
_BODY_BYTES_PER_CHAR = 4
_BODY_BYTES_OVERHEAD = 1024


def _meta(description: str, *, range_text: str | None = None, **constraints: Any) -> msgspec.Meta:
    """A field's constraints, its description and, when the constraints alone do not say it in
    words (a pattern, a URL), the range as docs/configuration.md and the error message state it."""
    extra = {"range": range_text} if range_text is not None else None
    return msgspec.Meta(description=description, extra=extra, **constraints)


_VISIBLE_ASCII = "visible ASCII characters (no spaces)"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: Annotated[
        str,
        _meta(
            "interface to bind",
            pattern=r"^[A-Za-z0-9.:%_-]{1,253}$",
            range_text="a host name or IP address: 1 to 253 letters, digits, `.`, `:`, `-`, `_`, `%`",
        ),
    ] = "127.0.0.1"
    # 0 is any free port (tests); a fixed port is needed with several workers (cli.py).
    port: Annotated[int, _meta("port to listen on; 0 picks a free one", ge=0, le=65535)] = 8080
    # Mount point of the API, e.g. `/micro-apps/for-api-providers/chat-service` (api.md Part A). No
    # braces: the router would read them as a path variable.
    base_path: Annotated[
        str,
        _meta(
            "mount the API under this path",
            pattern=r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,200}$",
            range_text="a URL path of at most 200 characters: letters, digits, `/` and `-._~!$&'()*+,;=:@%`",
        ),
    ] = ""
    # Unset: the embedded in-process Redis (fakeredis), data lost on exit (design.md section 9).
    redis_url: (
        Annotated[
            str,
            _meta(
                "Redis to use; unset, the in-process embedded Redis (one process, data lost on exit)",
                max_length=2048,
                range_text="a `redis://`, `rediss://` or `unix://` URL with a valid port and database",
            ),
        ]
        | None
    ) = None
    # A Redis Cluster, given any one node's URL: the cluster client instead of REDIS_URL.
    redis_cluster_url: (
        Annotated[
            str,
            _meta(
                "any node of a Redis Cluster, used instead of `REDIS_URL` (set one of the two)",
                max_length=2048,
                range_text="a `redis://` or `rediss://` URL with a host and a valid port",
            ),
        ]
        | None
    ) = None
    # A primary and its replicas watched by Redis Sentinel: the client asks the sentinels where the
    # primary is, and follows it through a failover (ledger/connection.py).
    redis_sentinel_url: (
        Annotated[
            str,
            _meta(
                "the sentinels and the service they watch, used instead of `REDIS_URL` (set one kind)",
                max_length=2048,
                range_text="`redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`",
            ),
        ]
        | None
    ) = None
    # `replica`: every write that moves money or history waits (WAIT) for a replica's acknowledgement,
    # and is answered 503 `not_replicated` when none came in time (ledger/durable.py, design.md).
    durability: Annotated[
        Literal["none", "replica"],
        _meta("`replica`: a write is acknowledged only once a replica has it; `none`: once the primary has"),
    ] = "none"
    # How long a write waits for a replica before it is answered 503; every request waiting on it holds
    # a slot of max_in_flight meanwhile.
    durability_timeout_ms: Annotated[
        int,
        _meta("with `replica`, milliseconds a write waits for a replica's acknowledgement", ge=1, le=10_000),
    ] = 1000
    # `serve` processes sharing the port (SO_REUSEPORT); more than one needs a real Redis.
    workers: Annotated[
        int, _meta("`serve` processes sharing the port; more than 1 needs a Redis", ge=1, le=128)
    ] = 1
    # On SIGTERM a worker stops accepting, then gives in-flight requests this long before cancelling them
    # (above 0: aiohttp reads 0 as "no limit").
    shutdown_timeout_s: Annotated[
        float,
        _meta("after SIGTERM, seconds in-flight requests may take before they are cancelled", gt=0, le=3600),
    ] = 30.0
    # A client has this long, from its connection's opening or the first byte of its next request on
    # a kept-alive one, to send a request's whole head (service/protocol.py): a client that trickles a
    # header line every few seconds would otherwise hold its connection for ever.
    header_timeout_s: Annotated[
        float,
        _meta("seconds a client has to send a request's line and headers, then 408", gt=0, le=300),
    ] = 10.0
    # An idle kept-alive connection is closed after this long (aiohttp's default is an hour). It also
    # bounds a request head pipelined behind a whole request, which the header timeout cannot see start.
    # Keep it above the idle time the proxy in front gives its pooled connections to the workers.
    keepalive_timeout_s: Annotated[
        float, _meta("seconds an idle kept-alive connection stays open", gt=0, le=3600)
    ] = 75.0
    # Requests a worker serves at once; past it, an immediate 503 `overloaded` (service/admission.py).
    # 100 suits replies that wait on a model; CPU-bound work wants less (docs/operations.md). Keep a load
    # balancer's own per-worker limit below it (deploy/haproxy.cfg's maxconn): at the cap a worker
    # reports itself not ready.
    max_in_flight: Annotated[
        int,
        _meta(
            "requests a worker serves at once; more get 503 `overloaded` (health, metrics excepted)",
            ge=1,
            le=100_000,
        ),
    ] = 100
    # Model calls one config may have running at once on a worker, unless its config sets
    # `model_calls_max`; past it, an immediate 429 `model_calls_exceeded` (service/model_calls.py). Below
    # max_in_flight, so that a config that holds its whole share leaves the worker to the others.
    model_calls_per_config: Annotated[
        int,
        _meta("model calls one config may have running at once per worker; more get 429", ge=1, le=100_000),
    ] = 32
    # Test and demo only: each message a client sends, through the API or the widget, waits this long
    # before it is handled (service/delay.py).
    message_delay_ms: Annotated[
        int,
        _meta("test and demo only: each message sent (API or widget) waits this first", ge=0, le=600_000),
    ] = 0
    # No braces: every key of a chat carries one hash tag, which a brace in the prefix would break.
    key_prefix: Annotated[
        str,
        _meta(
            "prefix of every Redis key",
            pattern=r"^[A-Za-z0-9_.:-]{1,32}$",
            range_text="1 to 32 letters, digits, `_`, `.`, `:` or `-`",
        ),
    ] = "cl"
    # 'auto' is a readable console log on a terminal and JSON lines otherwise (production).
    log_format: Annotated[
        Literal["auto", "json", "console"], _meta("`auto` is console on a terminal, else JSON lines")
    ] = "auto"
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _meta("least level logged")] = "info"
    # Bodies above this are refused with 413; contents above max_content_chars with 422 (api.md B 5).
    max_body_bytes: Annotated[
        int,
        _meta(
            "larger request bodies get 413; at least 4 × max_content_chars + 1024",
            ge=1024,
            le=64 * 1024 * 1024,
        ),
    ] = 1024 * 1024
    max_content_chars: Annotated[int, _meta("longer message contents get 422", ge=1, le=1_000_000)] = 16_000
    # 'offline' is the built-in deterministic model; 'openai' any OpenAI-compatible endpoint.
    provider: Annotated[
        Literal["offline", "openai"],
        _meta("`offline` (built in, not an LLM) or `openai` (any OpenAI-compatible server)"),
    ] = "offline"
    # The OpenAI-compatible upstream: POST {openai_base_url}/chat/completions with a Bearer key (unset
    # for servers that need none, e.g. Ollama). A config's own `model` overrides openai_model.
    openai_base_url: Annotated[
        str,
        _meta(
            "the model server's base URL; requests go to `{base}/chat/completions`",
            max_length=2048,
            range_text="an `http://` or `https://` URL with a host, no query or fragment",
        ),
    ] = "https://api.openai.com/v1"
    openai_api_key: (
        Annotated[
            str,
            _meta(
                "sent as `Authorization: Bearer`; unset for servers that need none",
                pattern=r"^[\x21-\x7e]{1,4096}$",
                range_text=f"1 to 4096 {_VISIBLE_ASCII}",
            ),
        ]
        | None
    ) = None
    openai_model: Annotated[
        str,
        _meta(
            "model asked for when the config names none; required with `openai`",
            pattern=r"^[\x21-\x7e]{0,256}$",
            range_text=f"at most 256 {_VISIBLE_ASCII}",
        ),
    ] = ""
    # Seconds to connect, to wait for each read (the first byte included), and for the whole exchange
    # with its retries; the total stays below reservation_ttl_s so a hold never expires under a call.
    openai_connect_timeout_s: Annotated[
        float, _meta("seconds to open a connection to the model server", gt=0, le=300)
    ] = 5.0
    # The worker's connections to the model server, shared by every config (each config's share of them
    # is model_calls_per_config), and how long a call waits for one when all are busy: a wait of its
    # own, so that a full pool fails a call in seconds instead of eating its exchange's deadline.
    openai_pool_size: Annotated[
        int, _meta("connections a worker keeps to the model server, for every config", ge=1, le=10_000)
    ] = 100
    openai_pool_wait_s: Annotated[
        float,
        _meta("seconds a model call waits for a free connection when all are busy", gt=0, le=60),
    ] = 1.0
    openai_read_timeout_s: Annotated[
        float, _meta("most seconds between two reads, the first byte included", gt=0, le=3600)
    ] = 30.0
    openai_total_timeout_s: Annotated[
        float,
        _meta(
            "most seconds for one exchange, retries and stream included; below reservation_ttl_s",
            gt=0,
            le=3600,
        ),
    ] = 90.0
    # Retries of a failed attempt (connect error, timeout, 408/409/429/5xx), only before the first byte.
    openai_max_retries: Annotated[
        int, _meta("retries before the first byte (connect errors, timeouts, 408/409/429/5xx)", ge=0, le=10)
    ] = 2
    # The first retry waits this long, each next one twice as long (capped at a few seconds).
    openai_retry_backoff_s: Annotated[
        float, _meta("first retry delay in seconds, doubled each time (at most 4 s)", ge=0, le=60)
    ] = 0.5
    # Reply tokens asked of the model when the config does not say.
    max_output_tokens: Annotated[
        int, _meta("reply tokens asked for when the config does not say", ge=1, le=1_000_000)
    ] = 512
    # The history sent as context: at most this many messages and this many tokens, newest first.
    history_messages: Annotated[int, _meta("most history messages sent as context", ge=0, le=1000)] = 20
    history_tokens: Annotated[
        int, _meta("most history tokens sent as context (newest first)", ge=0, le=2_000_000)
    ] = 4000
    # A hold outlives the longest model call; only a dead worker's hold expires (design.md section 4).
    reservation_ttl_s: Annotated[
        int,
        _meta("a hold's deadline in seconds; above openai_total_timeout_s with `openai`", ge=1, le=7200),
    ] = 120
    # A hold's reply part is at most this share of the reply tokens a chat has free (LedgerLimits), so
    # concurrent messages of a chat with a small budget hold at once instead of one after the other.
    hold_shares: Annotated[
        int,
        _meta("a hold takes at most 1/N of a chat's free reply tokens (1: all of them)", ge=1, le=64),
    ] = 4
    # How long a worker trusts a resolved API key: the bound on how late a revocation takes effect.
    auth_cache_ttl_s: Annotated[
        float,
        _meta("seconds a worker trusts a resolved key: how late a revocation takes effect", ge=0, le=60),
    ] = 5.0
    # The admin API's bearer token (/admin/...); unset, the admin API is off and answers 404. Long
    # enough that guessing it is hopeless.
    admin_token: (
        Annotated[
            str,
            _meta(
                "bearer token of the admin API; unset, `/admin/` answers 404",
                pattern=r"^[\x21-\x7e]{16,512}$",
                range_text=f"16 to 512 {_VISIBLE_ASCII}",
            ),
        ]
        | None
    ) = None
    # Origins allowed to call the API from a browser (CORS), comma-separated; '*' allows any.
    cors_origins: Annotated[
        str,
        _meta(
            "browser origins allowed to call the API, comma-separated, or `*`",
            max_length=8192,
            range_text="`*`, or comma-separated origins such as `https://shop.example:8443`",
        ),
    ] = ""
    # The demo config's key in embedded mode; unset, a random one is made and logged at start.
    demo_api_key: (
        Annotated[
            str,
            _meta(
                "pins the demo config's key in embedded mode; unset, a random one",
                pattern=f"^{_API_KEY_PATTERN}$",
                range_text=f"1 to 512 {_VISIBLE_ASCII}",
            ),
        ]
        | None
    ) = None
    # The chat widget's server-side API key (service/widget/); unset, the widget routes answer
    # 404, except on the embedded default, which uses the demo key. The browser never sees it.
    widget_api_key: (
        Annotated[
            str,
            _meta(
                "the chat widget's server-side key; unset, the widget is off (but on the embedded default)",
                pattern=f"^{_API_KEY_PATTERN}$",
                range_text=f"1 to 512 {_VISIBLE_ASCII}",
            ),
        ]
        | None
    ) = None
    # The budget, in tokens, of each chat the widget creates.
    widget_token_limit: Annotated[
        float, _meta("tokens of each chat the widget starts", gt=0, le=AMOUNT_TOKENS_MAX)
    ] = 1000.0

    # --- data lifecycle (design.md section 12) ---
    # A soft-deleted chat is erased for good (every record of it) this long after its deletion, by a
    # background pass; 0 keeps deleted chats until an operator erases them.
    deleted_chat_retention_s: Annotated[
        float,
        _meta("seconds a soft-deleted chat is kept before it is erased for good; 0: kept", ge=0, le=3.2e9),
    ] = 0.0
    # How often a worker looks for deleted chats past their retention; one worker does a pass at a time.
    retention_interval_s: Annotated[
        float, _meta("seconds between two passes of the deleted-chat retention", ge=0.05, le=86_400)
    ] = 60.0

    @property
    def cors_origin_list(self) -> frozenset[str]:
        return _origin_list(self.cors_origins)

    @property
    def embedded(self) -> bool:
        return self.redis_url is None and self.redis_cluster_url is None and self.redis_sentinel_url is None

    @property
    def durability_wait(self) -> Durability | None:
        """WAIT's arguments with `replica` (one replica), None with `none`."""
        return Durability(1, self.durability_timeout_ms) if self.durability == "replica" else None

    def ledger_limits(self) -> LedgerLimits:
        return LedgerLimits(reservation_ttl_ms=self.reservation_ttl_s * 1000, hold_shares=self.hold_shares)

    @property
    def api_prefix(self) -> str:
        """The base path without a trailing slash: '' or '/some/path'."""
        stripped = self.base_path.strip().rstrip("/")
        return "" if not stripped else "/" + stripped.lstrip("/")


@functools.lru_cache(maxsize=8)
def _origin_list(cors_origins: str) -> frozenset[str]:
    """The origins of CHATLEDGER_CORS_ORIGINS, parsed once: a browser's request reads them twice."""
    return frozenset(origin.strip() for origin in cors_origins.split(",") if origin.strip())


_REDIS_FIELDS = ("redis_url", "redis_cluster_url", "redis_sentinel_url")


def env_name(field: str) -> str:
    return field.upper() if field in _REDIS_FIELDS else f"CHATLEDGER_{field.upper()}"


class SettingsError(ValueError):
    """A setting from the environment is outside its range; the message names the variable."""


# --- what a constraint cannot say ---------------------------------------------------------------------
def _url_port_ok(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018  # raises ValueError for a port that is not 0..65535
    except ValueError:
        return False
    return True


def _redis_url_ok(url: str, schemes: frozenset[str] = frozenset({"redis", "rediss", "unix"})) -> bool:
    """What redis-py's from_url accepts: its schemes, a port, and a database number in the path."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or any(c.isspace() for c in url) or not _url_port_ok(url):
        return False
    if parts.scheme == "unix":
        return bool(parts.path)
    database = parts.path.lstrip("/")
    return bool(parts.hostname) and (database == "" or database.isdigit())


def _cluster_url_ok(url: str) -> bool:
    return _redis_url_ok(url, frozenset({"redis", "rediss"}))


def _sentinel_url_ok(url: str) -> bool:
    try:
        SentinelTarget(url)
    except ValueError:
        return False
    return True


def _http_url_ok(url: str) -> bool:
    parts = urlsplit(url)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
        and not any(c.isspace() for c in url)
        and _url_port_ok(url)
    )


# A browser's Origin: scheme://host[:port], nothing after it.
_ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


def _cors_origins_ok(value: str) -> bool:
    return all(origin == "*" or _ORIGIN_RE.fullmatch(origin) for origin in _origin_list(value))


_VALUE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "redis_url": _redis_url_ok,
    "redis_cluster_url": _cluster_url_ok,
    "redis_sentinel_url": _sentinel_url_ok,
    "openai_base_url": _http_url_ok,
    "cors_origins": _cors_origins_ok,
}
# Values never repeated in a message: keys, tokens, and URLs that may hold a password.
_SECRET_FIELDS = frozenset(
    {
        "redis_url",
        "redis_cluster_url",
        "redis_sentinel_url",
        "openai_api_key",
        "admin_token",
        "demo_api_key",
        "widget_api_key",
    }
)


# --- ranges in words -------------------------------------------------------------------------------------
@functools.cache
def _field_types() -> dict[str, mi.Type]:
    info = mi.type_info(Settings)
    assert isinstance(info, mi.StructType)
    return {field.name: field.type for field in info.fields}


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings, include_extras=True)


def describe_range(field: str) -> str:
    """The field's range in words, as the error message and docs/configuration.md state it."""
    return _describe(_field_types()[field])


def describe_field(field: str) -> str:
    """What the field does (its Meta description)."""
    kind = _field_types()[field]
    if isinstance(kind, mi.UnionType):
        (kind,) = (t for t in kind.types if not isinstance(t, mi.NoneType))
    assert isinstance(kind, mi.Metadata), "every setting carries its description"
    assert kind.extra_json_schema is not None
    description: str = kind.extra_json_schema["description"]
    return description


def _describe(kind: mi.Type) -> str:
    if isinstance(kind, mi.UnionType):
        (inner,) = (t for t in kind.types if not isinstance(t, mi.NoneType))
        return "unset, or " + _describe(inner)
    if isinstance(kind, mi.Metadata):
        return kind.extra["range"] if kind.extra else _describe(kind.type)
    if isinstance(kind, mi.LiteralType):
        return "one of " + ", ".join(f"`{value}`" for value in kind.values)
    if isinstance(kind, mi.IntType | mi.FloatType):
        noun = "an integer" if isinstance(kind, mi.IntType) else "a number"
        assert kind.le is not None, "every number has an upper bound"
        assert kind.ge is not None or kind.gt is not None, "every number has a lower bound"
        low = f"from {kind.ge}" if kind.ge is not None else f"above {kind.gt}"
        high = f"to {kind.le}" if low.startswith("from") else f"and at most {kind.le}"
        return f"{noun} {low} {high}".replace(str(AMOUNT_TOKENS_MAX), "10^12")
    raise AssertionError(f"no words for {kind!r}")


def _shown(field: str, value: object) -> str:
    if field in _SECRET_FIELDS:
        return " (value not shown)"
    text = str(value)
    return "=" + (text if len(text) <= 60 else text[:57] + "...")


def _out_of_range(field: str, value: object) -> str:
    return f"{env_name(field)}{_shown(field, value)} is out of range: it must be {describe_range(field)}."


# --- reading ----------------------------------------------------------------------------------------------
def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from the environment, then `overrides` (the CLI's flags) on top; SettingsError lists
    every value outside its range, then every pair of values that cannot work together."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        value = env.get(env_name(field))
        if value is not None and value != "":
            raw[field] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field, given in raw.items():
        try:
            values[field] = msgspec.convert(given, _type_hints()[field], strict=False)
        except msgspec.ValidationError:
            problems.append(_out_of_range(field, given))
            continue
        check = _VALUE_CHECKS.get(field)
        if check is not None and values[field] is not None and not check(values[field]):
            problems.append(_out_of_range(field, given))
    if problems:
        raise SettingsError("\n".join(problems))
    settings = Settings(**values)
    problems = cross_field_problems(settings)
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


def cross_field_problems(settings: Settings) -> list[str]:
    """Values each in range that cannot work together."""
    problems = []
    kinds = [env_name(field) for field in _REDIS_FIELDS if getattr(settings, field) is not None]
    if len(kinds) > 1:
        which = f"both {kinds[0]} and {kinds[1]}" if len(kinds) == 2 else "all three"
        problems.append(f"set one of REDIS_URL, REDIS_CLUSTER_URL and REDIS_SENTINEL_URL, not {which}.")
    if settings.durability == "replica" and settings.embedded:
        problems.append(
            "CHATLEDGER_DURABILITY=replica needs a Redis with replicas (REDIS_URL, REDIS_CLUSTER_URL or "
            "REDIS_SENTINEL_URL): the embedded Redis has none."
        )
    if settings.provider == "openai" and not settings.openai_model:
        problems.append(
            "CHATLEDGER_OPENAI_MODEL: set the model to ask for (e.g. gpt-4o-mini) with "
            "CHATLEDGER_PROVIDER=openai."
        )
    if settings.provider == "openai" and settings.reservation_ttl_s <= settings.openai_total_timeout_s:
        problems.append(
            f"CHATLEDGER_RESERVATION_TTL_S={settings.reservation_ttl_s} must be above "
            f"CHATLEDGER_OPENAI_TOTAL_TIMEOUT_S={settings.openai_total_timeout_s:g}: a hold must outlive "
            "the longest model call, or a slow reply's hold expires under it and the reply is lost."
        )
    body_needed = _BODY_BYTES_PER_CHAR * settings.max_content_chars + _BODY_BYTES_OVERHEAD
    if settings.max_body_bytes < body_needed:
        problems.append(
            f"CHATLEDGER_MAX_BODY_BYTES={settings.max_body_bytes} must be at least {body_needed} "
            f"(4 × CHATLEDGER_MAX_CONTENT_CHARS + 1024), or a message of the longest allowed content "
            "is refused as too large."
        )
    return problems


def reference_table() -> str:
    """docs/configuration.md's table of every setting: variable, type, range, default, meaning."""
    lines = ["| variable | type | range | default | meaning |", "| --- | --- | --- | --- | --- |"]
    defaults = {f.name: f.default for f in msgspec.structs.fields(Settings)}
    for field in Settings.__struct_fields__:
        default = defaults[field]
        shown = "(unset)" if default is None else "(empty)" if default == "" else f"`{default}`"
        kind = _type_word(_field_types()[field])
        lines.append(
            f"| `{env_name(field)}` | {kind} | {describe_range(field)} | {shown} | {describe_field(field)} |"
        )
    return "\n".join(lines) + "\n"


def _type_word(kind: mi.Type) -> str:
    if isinstance(kind, mi.UnionType):
        (inner,) = (t for t in kind.types if not isinstance(t, mi.NoneType))
        return "optional " + _type_word(inner)
    if isinstance(kind, mi.Metadata):
        return _type_word(kind.type)
    words = {mi.IntType: "integer", mi.FloatType: "number", mi.StrType: "text", mi.LiteralType: "choice"}
    return words[type(kind)]
