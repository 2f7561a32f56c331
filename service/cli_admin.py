"""The operator commands of `chatledger` (everything but `serve`): configs, API keys and chats, the same
operations as the admin HTTP API, run directly against Redis.

    chatledger config create --agent-name NAME --company-name NAME [options] | update CONFIG_ID [options]
    chatledger config show CONFIG_ID | list | delete CONFIG_ID
    chatledger key create CONFIG_ID | list CONFIG_ID | revoke (API_KEY | CONFIG_ID KEY_ID)
    chatledger chat show CHAT_ID | restore CHAT_ID | journal CHAT_ID [--limit N]
    chatledger chat erase CHAT_ID | config erase CONFIG_ID     (service/cli_data.py)
    chatledger retention backfill                             (service/cli_data.py)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec

import ledger
from service import cli_data
from service.admin_schemas import (
    ConfigPatch,
    admin_chat,
    admin_config,
    branding_fields,
    journal_entry,
    reconciliation,
)
from service.lifecycle import connect_redis
from service.schemas import iso_utc
from service.settings import Settings


class Stores(NamedTuple):
    tenants: ledger.TenantStore
    ledger: ledger.Ledger


Command = Callable[[Stores, argparse.Namespace], Awaitable[int]]


def _config_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """One option per field of ConfigPatch, each stored under that field's name: the branding's come from
    ledger.Branding (a flag for a yes-or-no field, named without its `is_`), the rest are listed here."""
    for field in branding_fields():
        flag = "--" + field.name.removeprefix("is_").replace("_", "-")
        if field.kind is bool:
            parser.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                help=field.description,
            )  # fmt: skip
        else:
            parser.add_argument(
                flag, dest=field.name, required=field.required and not update, help=field.description
            )
    parser.add_argument("--system-prompt", help="system prompt sent to the model")
    parser.add_argument("--model", help="model name for the provider")
    parser.add_argument("--max-output-tokens", type=int, help="reply tokens asked of the model")
    parser.add_argument("--temperature", type=float, help="sampling temperature sent to the model")
    for flag, name, token in (
        ("--prompt-weight", "prompt_token_weight", "prompt"),
        ("--completion-weight", "completion_token_weight", "reply"),
    ):
        help_text = f"charge per {token} token (default 1.0)"
        parser.add_argument(flag, dest=name, metavar="WEIGHT", type=float, help=help_text)
    parser.add_argument("--rate-limit-per-s", type=float, help="requests per second per API key (0: none)")
    parser.add_argument("--rate-limit-burst", type=int, help="requests an API key may make at once")
    parser.add_argument(
        "--model-calls-max", type=int, help="model calls running at once per worker (0: the default)"
    )


def add_commands(commands: Any) -> None:
    """Add the config, key and chat commands to the `chatledger` parser's subcommands."""
    config = commands.add_parser("config", help="manage chat configurations").add_subparsers(
        dest="action", required=True
    )
    _config_options(
        config.add_parser("create", help="create a config and print a new API key once"), update=False
    )
    update = config.add_parser("update", help="change some fields of a config")
    update.add_argument("config_id")
    _config_options(update, update=True)
    for action, help_text in (
        ("show", "print a config as JSON"),
        ("delete", "delete a config, revoking its keys"),
    ):
        config.add_parser(action, help=help_text).add_argument("config_id")
    config.add_parser("list", help="list config ids")

    key = commands.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    key.add_parser("create", help="issue a new key for a config (printed once)").add_argument("config_id")
    key.add_parser("list", help="list a config's keys (ids and prefixes only)").add_argument("config_id")
    revoke = key.add_parser("revoke", help="revoke a key given its value, or a config id and key id")
    revoke.add_argument("key_or_config", metavar="API_KEY|CONFIG_ID")
    revoke.add_argument("key_id", nargs="?")

    chat = commands.add_parser("chat", help="inspect chats (any config)").add_subparsers(
        dest="action", required=True
    )
    chat.add_parser("show", help="a chat with its ledger figures, as JSON").add_argument("chat_id")
    chat.add_parser("restore", help="undo a soft delete").add_argument("chat_id")
    journal = chat.add_parser("journal", help="the chat's usage journal and its reconciliation")
    journal.add_argument("chat_id")
    journal.add_argument("--limit", type=int, default=1000, help="entries to print (default 1000)")
    cli_data.add_erase_commands(config, chat)
    cli_data.add_export_command(commands)
    cli_data.add_retention_command(commands)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    client = connect_redis(settings)
    keys = ledger.Keyspace(settings.key_prefix)
    try:
        stores = Stores(
            ledger.TenantStore(client, keys), ledger.Ledger(client, keys, settings.ledger_limits())
        )
        return await _COMMANDS[(args.command, args.action)](stores, args)
    finally:
        await client.aclose()


def _print_json(value: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(value)).decode())


def _config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options given, as ConfigRecord fields, converted as the admin API converts a PATCH body."""
    given = {name: getattr(args, name) for name in ConfigPatch.__struct_fields__}
    return ConfigPatch(**{name: value for name, value in given.items() if value is not None}).record_fields()


def _config_id(value: str) -> str:
    config_id = ledger.normalize_uuid(value)
    if config_id is None:
        raise ledger.ConfigNotFound()
    return config_id


def _chat_id(value: str) -> str:
    chat_id = ledger.normalize_uuid(value)
    if chat_id is None:
        raise ledger.ChatNotFound()
    return chat_id


async def _config_create(stores: Stores, args: argparse.Namespace) -> int:
    config = await stores.tenants.create_config(**_config_fields(args))
    issued = await stores.tenants.issue_key(config.config_id)
    print(f"config_id: {config.config_id}")
    print(f"api_key:   {issued.api_key}")
    print("The key is shown once; chatledger keeps only its SHA-256 digest.", file=sys.stderr)
    return 0


async def _config_update(stores: Stores, args: argparse.Namespace) -> int:
    _print_json(
        admin_config(await stores.tenants.update_config(_config_id(args.config_id), **_config_fields(args)))
    )
    return 0


async def _config_show(stores: Stores, args: argparse.Namespace) -> int:
    config = await stores.tenants.get_config(_config_id(args.config_id))
    if config is None:
        raise ledger.ConfigNotFound()
    _print_json(admin_config(config))
    return 0


async def _config_delete(stores: Stores, args: argparse.Namespace) -> int:
    if not await stores.tenants.delete_config(_config_id(args.config_id)):
        raise ledger.ConfigNotFound()
    print("deleted; its keys are revoked (its chats are kept)")
    return 0


async def _config_list(stores: Stores, _args: argparse.Namespace) -> int:
    for config_id in await stores.tenants.list_config_ids():
        print(config_id)
    return 0


async def _key_create(stores: Stores, args: argparse.Namespace) -> int:
    issued = await stores.tenants.issue_key(_config_id(args.config_id))
    print(f"key_id:  {issued.key_id}")
    print(f"api_key: {issued.api_key}")
    return 0


async def _key_list(stores: Stores, args: argparse.Namespace) -> int:
    for info in await stores.tenants.list_keys(_config_id(args.config_id)):
        print(f"{info.key_id}  {info.prefix}…  created {iso_utc(info.created_ms)}")
    return 0


async def _key_revoke(stores: Stores, args: argparse.Namespace) -> int:
    if args.key_id is None:
        revoked = await stores.tenants.revoke_key_value(args.key_or_config)
    elif ledger.normalize_uuid(args.key_or_config):
        revoked = await stores.tenants.revoke_key(args.key_or_config, args.key_id)
    else:
        revoked = False
    print("revoked" if revoked else "no such key", file=sys.stderr)
    return 0 if revoked else 1


async def _chat_show(stores: Stores, args: argparse.Namespace) -> int:
    _print_json(admin_chat(await stores.ledger.inspect_chat(_chat_id(args.chat_id))))
    return 0


async def _chat_restore(stores: Stores, args: argparse.Namespace) -> int:
    _print_json(admin_chat(await stores.ledger.restore_chat(_chat_id(args.chat_id))))
    return 0


async def _chat_journal(stores: Stores, args: argparse.Namespace) -> int:
    """One line per balance move, then the reconciliation; exit 1 when the journal and counters differ."""
    chat_id = _chat_id(args.chat_id)
    await stores.ledger.get_chat(None, chat_id)
    for entry in map(journal_entry, await stores.ledger.read_journal(chat_id, count=args.limit)):
        shortfall = f"  shortfall {entry.shortfall:.3f}" if entry.shortfall else ""
        print(
            f"{entry.timestamp}  {entry.op:<8} used {entry.used_delta:+.3f}"
            f"  reserved {entry.reserved_delta:+.3f}  limit {entry.limit_delta:+.3f}{shortfall}"
        )
    result = reconciliation(await stores.ledger.reconcile(chat_id))
    verdict = "reconciled" if result.ok else "MISMATCH"
    print(
        f"{verdict}: {result.entries} entries; used {result.journal_used:.3f} / {result.token_used:.3f},"
        f" reserved {result.journal_reserved:.3f} / {result.token_reserved:.3f},"
        f" limit {result.journal_limit:.3f} / {result.token_limit:.3f}"
    )
    return 0 if result.ok else 1


_COMMANDS: dict[tuple[str, str], Command] = {
    ("config", "create"): _config_create,
    ("config", "update"): _config_update,
    ("config", "show"): _config_show,
    ("config", "delete"): _config_delete,
    ("config", "list"): _config_list,
    ("key", "create"): _key_create,
    ("key", "list"): _key_list,
    ("key", "revoke"): _key_revoke,
    ("chat", "show"): _chat_show,
    ("chat", "restore"): _chat_restore,
    ("chat", "journal"): _chat_journal,
    ("chat", "erase"): cli_data.chat_erase,
    ("config", "erase"): cli_data.config_erase,
    ("export", "run"): cli_data.export,
    ("retention", "backfill"): cli_data.retention_backfill,
}
