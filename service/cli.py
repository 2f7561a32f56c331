"""The `chatledger` command: serve the API, and manage configs and API keys in a real Redis.

    chatledger serve [--host H] [--port P] [--base-path /prefix] [--workers N]
    chatledger config ... | key ... | chat ...      (the operator commands: service/cli_admin.py)

Every command but `serve` needs REDIS_URL (or REDIS_CLUSTER_URL): the embedded Redis lives inside the
server process. For the same reason `serve --workers N` needs one when N > 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import ledger
from service import cli_admin, workers
from service.logging import configure_logging
from service.settings import Settings, SettingsError, settings_from_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatledger", description="Chat API with exact token budgets.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", help="interface to bind (CHATLEDGER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (CHATLEDGER_PORT, default 8080)")
    serve.add_argument("--base-path", help="mount the API under this path (CHATLEDGER_BASE_PATH)")
    serve.add_argument(
        "--workers", type=int, help="processes sharing the port (CHATLEDGER_WORKERS, default 1)"
    )

    cli_admin.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_env(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            base_path=getattr(args, "base_path", None),
            workers=getattr(args, "workers", None),
        )
    except SettingsError as exc:
        # One line per setting at fault, each naming its variable and its range (docs/configuration.md).
        for line in str(exc).splitlines():
            print(f"chatledger: {line}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings)
    if settings.embedded:
        print(
            "chatledger: set REDIS_URL (or REDIS_CLUSTER_URL): configs and keys are kept in Redis.",
            file=sys.stderr,
        )
        return 2
    # Operator commands print results on stdout: logs go to stderr, and only warnings.
    configure_logging("console", "warning", cache=False)
    try:
        return asyncio.run(cli_admin.run(settings, args))
    except ledger.LedgerError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return 1


def serve(settings: Settings) -> int:
    """Run the API (service/workers.py), after refusing what cannot work."""
    if settings.workers > 1 and settings.embedded:
        print(
            "chatledger: --workers needs REDIS_URL or REDIS_CLUSTER_URL: the in-process Redis lives "
            "inside one process and cannot be shared by several workers.",
            file=sys.stderr,
        )
        return 2
    if settings.workers > 1 and settings.port == 0:
        print(
            "chatledger: --workers needs a fixed --port: each worker binds the port itself.", file=sys.stderr
        )
        return 2
    return workers.serve(settings)
