"""The `chatledger` command: serve the API, and manage configs and API keys in a real Redis.

    chatledger serve [--host H] [--port P] [--base-path /prefix] [--workers N]
    chatledger config create --agent-name NAME --company-name NAME [branding and model options]
    chatledger config show CONFIG_ID | chatledger config list
    chatledger key create CONFIG_ID | key list CONFIG_ID | key revoke (API_KEY | CONFIG_ID KEY_ID)

Every command but `serve` needs REDIS_URL (or REDIS_CLUSTER_URL): the embedded Redis lives inside the
server process. For the same reason `serve --workers N` needs one when N > 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

import ledger
from service import workers
from service.lifecycle import connect_redis
from service.schemas import iso_utc
from service.settings import Settings, SettingsError, settings_from_env

# ConfigRecord fields the CLI sets, with their help text; weights are given as floats.
_CONFIG_TEXT_FIELDS = {
    "primary_color": "UI colour, e.g. #1A73E8",
    "header_text": "text of the chat header",
    "logo_url": "logo shown on the start page",
    "welcome_message": "first message the UI shows (not stored in history)",
    "chat_first_page_description": "description on the start page",
    "start_page_title": "title of the start page",
    "start_page_slogan": "slogan of the start page",
    "system_prompt": "system prompt sent to the model",
    "model": "model name for the provider",
}


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

    config = commands.add_parser("config", help="manage chat configurations").add_subparsers(
        dest="action", required=True
    )
    create = config.add_parser("create", help="create a config and print a new API key once")
    create.add_argument("--agent-name", required=True)
    create.add_argument("--company-name", required=True)
    for field, help_text in _CONFIG_TEXT_FIELDS.items():
        create.add_argument("--" + field.replace("_", "-"), help=help_text)
    create.add_argument("--full-width", action="store_true", help="full-width chat layout")
    create.add_argument("--max-output-tokens", type=int, help="reply tokens asked of the model")
    create.add_argument("--prompt-weight", type=float, help="charge per prompt token (default 1.0)")
    create.add_argument("--completion-weight", type=float, help="charge per reply token (default 1.0)")
    show = config.add_parser("show", help="print a config as JSON")
    show.add_argument("config_id")
    config.add_parser("list", help="list config ids")

    key = commands.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    key_create = key.add_parser("create", help="issue a new key for a config (printed once)")
    key_create.add_argument("config_id")
    key_list = key.add_parser("list", help="list a config's keys (ids and prefixes only)")
    key_list.add_argument("config_id")
    revoke = key.add_parser("revoke", help="revoke a key given its value, or a config id and key id")
    revoke.add_argument("key_or_config", metavar="API_KEY|CONFIG_ID")
    revoke.add_argument("key_id", nargs="?")
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
        print(f"chatledger: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is not None and settings.redis_cluster_url is not None:
        print("chatledger: set REDIS_URL or REDIS_CLUSTER_URL, not both.", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings)
    if settings.embedded:
        print(
            "chatledger: set REDIS_URL (or REDIS_CLUSTER_URL): configs and keys are kept in Redis.",
            file=sys.stderr,
        )
        return 2
    handler = _ADMIN_COMMANDS[(args.command, args.action)]
    try:
        return asyncio.run(_with_store(settings, lambda tenants: handler(tenants, args)))
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


async def _with_store(settings: Settings, run: Callable[[ledger.TenantStore], Awaitable[int]]) -> int:
    client = connect_redis(settings)
    try:
        return await run(ledger.TenantStore(client, ledger.Keyspace(settings.key_prefix)))
    finally:
        await client.aclose()


def _weight_milli(weight: float | None) -> int | None:
    return None if weight is None else ledger.weight_milli(weight)


async def _config_create(tenants: ledger.TenantStore, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        f: getattr(args, f) for f in _CONFIG_TEXT_FIELDS if getattr(args, f) is not None
    }
    fields["is_full_width"] = args.full_width
    optional = {
        "max_output_tokens": args.max_output_tokens,
        "prompt_weight_milli": _weight_milli(args.prompt_weight),
        "completion_weight_milli": _weight_milli(args.completion_weight),
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    config = await tenants.create_config(agent_name=args.agent_name, company_name=args.company_name, **fields)
    issued = await tenants.issue_key(config.config_id)
    print(f"config_id: {config.config_id}")
    print(f"api_key:   {issued.api_key}")
    print("The key is shown once; chatledger keeps only its SHA-256 digest.", file=sys.stderr)
    return 0


async def _config_show(tenants: ledger.TenantStore, args: argparse.Namespace) -> int:
    config = await tenants.get_config(args.config_id) if ledger.normalize_uuid(args.config_id) else None
    if config is None:
        raise ledger.ConfigNotFound()
    print(msgspec.json.format(msgspec.json.encode(config)).decode())
    return 0


async def _config_list(tenants: ledger.TenantStore, _args: argparse.Namespace) -> int:
    for config_id in await tenants.list_config_ids():
        print(config_id)
    return 0


async def _key_create(tenants: ledger.TenantStore, args: argparse.Namespace) -> int:
    if not ledger.normalize_uuid(args.config_id):
        raise ledger.ConfigNotFound()
    issued = await tenants.issue_key(args.config_id)
    print(f"key_id:  {issued.key_id}")
    print(f"api_key: {issued.api_key}")
    return 0


async def _key_list(tenants: ledger.TenantStore, args: argparse.Namespace) -> int:
    if not ledger.normalize_uuid(args.config_id):
        raise ledger.ConfigNotFound()
    for info in await tenants.list_keys(args.config_id):
        print(f"{info.key_id}  {info.prefix}…  created {iso_utc(info.created_ms)}")
    return 0


async def _key_revoke(tenants: ledger.TenantStore, args: argparse.Namespace) -> int:
    if args.key_id is None:
        revoked = await tenants.revoke_key_value(args.key_or_config)
    elif ledger.normalize_uuid(args.key_or_config):
        revoked = await tenants.revoke_key(args.key_or_config, args.key_id)
    else:
        revoked = False
    print("revoked" if revoked else "no such key", file=sys.stderr)
    return 0 if revoked else 1


_ADMIN_COMMANDS: dict[tuple[str, str], Callable[[ledger.TenantStore, argparse.Namespace], Awaitable[int]]] = {
    ("config", "create"): _config_create,
    ("config", "show"): _config_show,
    ("config", "list"): _config_list,
    ("key", "create"): _key_create,
    ("key", "list"): _key_list,
    ("key", "revoke"): _key_revoke,
}
