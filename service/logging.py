"""structlog, configured once: JSON lines in production, a console renderer on a terminal.

One `request` event per request carries the request id (bound per request through contextvars, which
aiohttp copies per request). API keys and message content are never logged at info: handlers do not pass
them, and `redact` drops any field whose name says it holds one, as a second line of defence.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_SECRET_FIELDS = frozenset({"api_key", "x_api_key", "authorization", "content", "user_content", "reply"})


def redact(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop secret-bearing fields from every event at info and above."""
    # isdisjoint first: it builds no set, and almost no event holds such a field.
    if method != "debug" and not _SECRET_FIELDS.isdisjoint(event):
        for field in _SECRET_FIELDS.intersection(event):
            event[field] = "[redacted]"
    return event


def _fallback(value: object) -> object:
    """What the JSON line holds for a value JSON has no type for: structlog's own fallback."""
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if callable(structlog_form) else repr(value)


_JSON = msgspec.json.Encoder(enc_hook=_fallback)


class UtcStamper:
    """`timestamp`: ISO-8601 UTC with microseconds and `Z`, as structlog's
    `TimeStamper(fmt="iso", utc=True)` writes it, with the date and time of day formatted once per
    second instead of once per event: every request logs a line."""

    def __init__(self) -> None:
        # (epoch second, its "YYYY-MM-DDTHH:MM:SS"), replaced whole, so a thread never sees a mix.
        self._second: tuple[int, str] = (-1, "")

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event["timestamp"] = self.now()
        return event

    def now(self) -> str:
        """The current time as the `timestamp` field holds it."""
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{micros:06d}Z"


class JsonLine:
    """The JSON format's processors after merge_contextvars, in one call: add_log_level, UtcStamper,
    redact, format_exc_info and render_json, in that order, with the same line as a result. Every
    request logs a line, and as separate processors each paid a call and made a dict or a set of its
    own (docs/performance.md has what that cost)."""

    def __init__(self) -> None:
        self._stamper = UtcStamper()

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        # structlog's add_log_level: "warn" and "exception" are aliases.
        event["level"] = "warning" if method == "warn" else "error" if method == "exception" else method
        event["timestamp"] = self._stamper.now()
        redact(logger, method, event)
        if "exc_info" in event:
            structlog.processors.format_exc_info(logger, method, event)
        # msgspec rather than structlog's JSONRenderer: json.dumps is the slower encoder, and every
        # request writes a line. JSON has no NaN: msgspec writes null.
        return _JSON.encode(event).decode()


class _StderrLogger:
    """Writes each line to sys.stderr as it is at that write, not when logging was configured:
    whoever replaces it later (a test capture, a daemonizing wrapper) gets the lines, and none go to
    a closed file. structlog's WriteLogger over a proxy of sys.stderr did the same in three calls
    per line instead of one."""

    def msg(self, message: str) -> None:
        stderr = sys.stderr
        with _WRITE_LOCK:
            stderr.write(message + "\n")
            stderr.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


# One lock for every logger, as WriteLogger has one per file: a line is never split by another thread's.
_WRITE_LOCK = threading.Lock()


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(log_format: str = "auto", level: str = "info", *, cache: bool = True) -> None:
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    processors: list[structlog.types.Processor] = [structlog.contextvars.merge_contextvars]
    if console:
        processors += [
            structlog.processors.add_log_level,
            UtcStamper(),
            redact,
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(),
        ]
    else:
        processors.append(JsonLine())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_stderr_logger,
        # A server caches its loggers (structlog's performance advice); a one-shot command does not,
        # so configuring logging again (tests run the CLI in-process) takes effect everywhere.
        cache_logger_on_first_use=cache,
    )
