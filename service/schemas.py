"""The HTTP contract as msgspec types (api.md): request bodies, query strings and response objects.

Decoders and the encoder are built once at import (msgspec's performance advice). Request types accept
unknown fields on purpose: clients of the original service may send extra ones.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec

import ledger

T = TypeVar("T")

# A finite JSON number within the ledger's bounds; integers are accepted (api.md Part B 4). Rounding to
# milli-tokens and the positivity of a top-up are checked by ledger.to_milli.
TokenAmount = Annotated[float, msgspec.Meta(ge=0, le=ledger.AMOUNT_TOKENS_MAX)]


# --- requests -----------------------------------------------------------------------------------------
class CreateChatRequest(msgspec.Struct):
    token_limit: TokenAmount


class SendMessageRequest(msgspec.Struct):
    chat_id: str
    content: str
    # Answer with Server-Sent Events, like `Accept: text/event-stream` (api.md Part C).
    stream: bool = False


class AddTokensRequest(msgspec.Struct):
    additional_tokens: TokenAmount


# The largest offset: beyond it no list can reach, and Redis refuses ranges past 64 bits (found by
# schemathesis: an offset of 2.4e30 was a 503, client input answered as a server failure).
OFFSET_MAX = 2**53 - 1


class PageQuery(msgspec.Struct, frozen=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    offset: Annotated[int, msgspec.Meta(ge=0, le=OFFSET_MAX)] = 0


class ChatListQuery(PageQuery, frozen=True):
    include_deleted: bool = False


class HistoryPageQuery(PageQuery, frozen=True):
    # Cursor pagination (api.md Part C): message ids, exclusive.
    after: str | None = None
    before: str | None = None


CREATE_CHAT_DECODER = msgspec.json.Decoder(CreateChatRequest)
SEND_MESSAGE_DECODER = msgspec.json.Decoder(SendMessageRequest)
ADD_TOKENS_DECODER = msgspec.json.Decoder(AddTokensRequest)


# --- responses ----------------------------------------------------------------------------------------
class ChatOut(msgspec.Struct):
    chat_id: str
    created_at: str
    agent_name: str
    creator_company_name: str
    token_limit: float
    token_used: float
    deleted: bool
    messages: list[Any] = msgspec.field(default_factory=list)


class MessageOut(msgspec.Struct, omit_defaults=True):
    chat_id: str
    is_user: bool
    content: str
    timestamp: str
    # Part C: a stable id that sorts as a string in time order, and on AI messages the exchange's charge.
    id: str = ""
    tokens_charged: float | None = None
    truncated: bool = False


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ConfigOut(msgspec.Struct):
    config_id: str
    agent_name: str
    company_name: str
    primary_color: str
    header_text: str
    logo_url: str
    welcome_message: str
    chat_first_page_description: str
    created_at: str
    updated_at: str
    is_full_width: bool
    start_page_title: str
    start_page_slogan: str


ENCODER = msgspec.json.Encoder()


def iso_utc(epoch_ms: int) -> str:
    """ISO-8601 UTC, whole seconds, `Z` suffix (api.md Part A)."""
    return _iso_second(epoch_ms // 1000)


# A message's answer is stamped with the second it was settled in, which the messages settled just
# before share: formatting each second once saves most of a datetime's cost per message (issue 6).
@functools.lru_cache(maxsize=1024)
def _iso_second(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def chat_out(chat: ledger.ChatState) -> ChatOut:
    return ChatOut(
        chat_id=chat.chat_id,
        created_at=iso_utc(chat.created_ms),
        agent_name=chat.agent_name,
        creator_company_name=chat.company_name,
        token_limit=ledger.from_milli(chat.limit_milli),
        token_used=ledger.from_milli(chat.used_milli),
        deleted=chat.deleted,
    )


def message_out(chat_id: str, message: ledger.StoredMessage) -> MessageOut:
    return MessageOut(
        chat_id=chat_id,
        is_user=message.is_user,
        content=message.content,
        timestamp=iso_utc(message.timestamp_ms),
        id=message.message_id,
        tokens_charged=None if message.is_user else ledger.from_milli(message.charged_milli),
        truncated="t" in message.flags,
    )


def config_out(config: ledger.ConfigRecord) -> ConfigOut:
    return ConfigOut(
        config_id=config.config_id,
        agent_name=config.agent_name,
        company_name=config.company_name,
        primary_color=config.primary_color,
        header_text=config.header_text,
        logo_url=config.logo_url,
        welcome_message=config.welcome_message,
        chat_first_page_description=config.chat_first_page_description,
        created_at=iso_utc(config.created_ms),
        updated_at=iso_utc(config.updated_ms),
        is_full_width=config.is_full_width,
        start_page_title=config.start_page_title,
        start_page_slogan=config.start_page_slogan,
    )
