"""The data lifecycle commands of `chatledger` (design.md section 12): erase a chat or a config for
good, and export a config's chats.

    chatledger chat erase CHAT_ID
    chatledger config erase CONFIG_ID
    chatledger export CONFIG_ID [--include-deleted] [--cursor CURSOR]   (NDJSON on stdout)
    chatledger retention backfill
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import ledger
from service.export import ndjson_pages

if TYPE_CHECKING:
    from service.cli_admin import Stores


def add_erase_commands(config: argparse._SubParsersAction, chat: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`config erase` and `chat erase`, on the `config` and `chat` commands' subcommands."""
    config.add_parser(
        "erase", help="erase a config, its keys and every chat of it for good (run again to resume)"
    ).add_argument("config_id")
    chat.add_parser("erase", help="erase a chat and every record of it for good").add_argument("chat_id")


def add_export_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = commands.add_parser(
        "export", help="a config's chats and messages as NDJSON on stdout (docs/operations.md)"
    )
    export.set_defaults(action="run")
    export.add_argument("config_id")
    export.add_argument("--include-deleted", action="store_true", help="deleted chats too")
    export.add_argument("--cursor", help="resume after the line that carried this cursor")


def add_retention_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    retention = commands.add_parser("retention", help="the retention of deleted chats").add_subparsers(
        dest="action", required=True
    )
    retention.add_parser(
        "backfill",
        help="put every deleted chat missing from its config's deleted index into it, so retention "
        "erases it (docs/operations.md)",
    )


async def retention_backfill(stores: Stores, args: argparse.Namespace) -> int:
    """Read every config's chats now (the retention pass does it once by itself, a bounded part each
    pass): for chats deleted by a worker of an older version after that, during a rolling upgrade."""
    indexed = await stores.ledger.backfill_deleted_indexes()
    print(f"indexed {indexed} deleted chats for retention", file=sys.stderr)
    return 0


async def export(stores: Stores, args: argparse.Namespace) -> int:
    """Write each page as it comes, so the process holds one page whatever the config's size; exit 1
    when the store failed midway (the last line is then `error`, with the cursor to resume from)."""
    config_id = ledger.normalize_uuid(args.config_id)
    if config_id is None or not await stores.ledger.config_exists(config_id):
        raise ledger.ConfigNotFound()
    cursor = ledger.ExportCursor.parse(args.cursor) if args.cursor else None
    if args.cursor and cursor is None:
        print("chatledger: --cursor must be one an export line carried", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    chunk = b""
    async for chunk in ndjson_pages(stores.ledger, config_id, cursor, include_deleted=args.include_deleted):
        out.write(chunk)
        out.flush()
    # The error line comes alone, as the last chunk.
    return 1 if chunk.startswith(b'{"type":"error"') else 0


async def chat_erase(stores: Stores, args: argparse.Namespace) -> int:
    chat_id = ledger.normalize_uuid(args.chat_id)
    if chat_id is None:
        raise ledger.ChatNotFound()
    config_id = await stores.ledger.erase_chat(chat_id)
    print(f"erased chat {chat_id} of config {config_id}", file=sys.stderr)
    return 0


async def config_erase(stores: Stores, args: argparse.Namespace) -> int:
    """Erase in batches, printing nothing but the count: an interrupted run is resumed by running it
    again, which erases what the first left."""
    config_id = ledger.normalize_uuid(args.config_id)
    if config_id is None or not await stores.ledger.config_exists(config_id):
        raise ledger.ConfigNotFound()
    erased = await stores.ledger.erase_config(config_id)
    print(f"erased config {config_id} and {erased} chats", file=sys.stderr)
    return 0
