"""structlog, configured once: JSON lines in production, a console renderer on a terminal.

One `request` event per request carries the request id (bound per request through contextvars, which
aiohttp copies per request). API keys and message content are never logged at info: handlers do not pass
them, and `redact` drops any field whose name says it holds one, as a second line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

_SECRET_FIELDS = frozenset({"api_key", "x_api_key", "authorization", "content", "user_content", "reply"})


def redact(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop secret-bearing fields from every event at info and above."""
    if method != "debug":
        for field in _SECRET_FIELDS.intersection(event):
            event[field] = "[redacted]"
    return event


class _CurrentStderr:
    """sys.stderr as it is at each write, not when logging was configured: whoever replaces it later
    (a test capture, a daemonizing wrapper) gets the lines, and none go to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(log_format: str = "auto", level: str = "info", *, cache: bool = True) -> None:
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        # A server caches its loggers (structlog's performance advice); a one-shot command does not,
        # so configuring logging again (tests run the CLI in-process) takes effect everywhere.
        cache_logger_on_first_use=cache,
    )
