"""The data lifecycle commands of `chatledger` (design.md section 12): erase a chat or a config for
good, and export a config's chats.

    chatledger chat erase CHAT_ID
    chatledger config erase CONFIG_ID
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import ledger

if TYPE_CHECKING:
    from service.cli_admin import Stores


def add_erase_commands(config: argparse._SubParsersAction, chat: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`config erase` and `chat erase`, on the `config` and `chat` commands' subcommands."""
    config.add_parser(
        "erase", help="erase a config, its keys and every chat of it for good (run again to resume)"
    ).add_argument("config_id")
    chat.add_parser("erase", help="erase a chat and every record of it for good").add_argument("chat_id")


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
