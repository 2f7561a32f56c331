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
# The least top-up: ledger.to_milli rounds half up to milli-tokens, and a top-up must add at least one.
TOP_UP_TOKENS_MIN = 0.0005

# What the OpenAPI document says of ids and times; the types stay `str`, as the ledger hands them over.
# A chat or config id is a UUID: any other string reads as not found (api.md Part B 6).
UUID_SCHEMA = {"format": "uuid"}
DATE_TIME_SCHEMA = {"format": "date-time"}
# A message id (api.md Part C): its position and its time in ms (a chat written before positions: its
# time and a sequence number; ledger/history.py), as the cursors take it back.
MESSAGE_ID_PATTERN = r"^[0-9]{1,16}-[0-9]{1,19}$"
UuidStr = Annotated[str, msgspec.Meta(extra_json_schema=UUID_SCHEMA)]
Timestamp = Annotated[str, msgspec.Meta(extra_json_schema=DATE_TIME_SCHEMA)]


# --- requests -----------------------------------------------------------------------------------------
class CreateChatRequest(msgspec.Struct):
    token_limit: Annotated[
        TokenAmount,
        msgspec.Meta(
            description="The chat's budget in tokens, kept to 3 decimals (0.0005 rounds up to 0.001)."
        ),
    ]


class SendMessageRequest(msgspec.Struct):
    # Missing or not a string: 400 (api.md Part B 2). Its length and visible character are checked by
    # service/requests.py (422 invalid_content, content_too_long); the document states both.
    chat_id: Annotated[UuidStr, msgspec.Meta(description="The chat; missing is 400, an unknown id 404.")]
    content: Annotated[str, msgspec.Meta(description="The user's message: at least one non-space character.")]
    # Answer with Server-Sent Events, like `Accept: text/event-stream` (api.md Part C).
    stream: Annotated[
        bool, msgspec.Meta(description="Answer with Server-Sent Events (text/event-stream).")
    ] = False


class AddTokensRequest(msgspec.Struct):
    # Positive after rounding to milli-tokens: 0.0005 is the least amount that adds anything.
    additional_tokens: Annotated[
        float,
        msgspec.Meta(
            ge=TOP_UP_TOKENS_MIN,
            le=ledger.AMOUNT_TOKENS_MAX,
            description="Tokens added to the chat's limit, kept to 3 decimals (0.0005 adds 0.001). A "
            "limit that would pass 10^12 is 422 token_limit_too_large.",
        ),
    ]


# The largest offset: beyond it no list can reach, and Redis refuses ranges past 64 bits, which would
# answer client input as a server failure.
OFFSET_MAX = 2**53 - 1
_ONE_OF = "Use one of offset, after and before: together they are 422."


class PageQuery(msgspec.Struct, frozen=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100, description="Items per page.")] = 10
    offset: Annotated[int, msgspec.Meta(ge=0, le=OFFSET_MAX, description="Items skipped, oldest first.")] = 0


class ChatListQuery(PageQuery, frozen=True):
    include_deleted: Annotated[bool, msgspec.Meta(description="List soft-deleted chats too.")] = False


# Cursor pagination (api.md Part C): message ids, exclusive.
Cursor = Annotated[str, msgspec.Meta(pattern=MESSAGE_ID_PATTERN)]


class HistoryPageQuery(PageQuery, frozen=True):
    offset: Annotated[
        int,
        msgspec.Meta(ge=0, le=OFFSET_MAX, description=f"Messages skipped, oldest first. {_ONE_OF}"),
    ] = 0
    after: (
        Annotated[Cursor, msgspec.Meta(description=f"The page of messages after this message id. {_ONE_OF}")]
        | None
    ) = None
    before: (
        Annotated[Cursor, msgspec.Meta(description=f"The page of messages before this message id. {_ONE_OF}")]
        | None
    ) = None


CREATE_CHAT_DECODER = msgspec.json.Decoder(CreateChatRequest)
SEND_MESSAGE_DECODER = msgspec.json.Decoder(SendMessageRequest)
ADD_TOKENS_DECODER = msgspec.json.Decoder(AddTokensRequest)


# --- responses ----------------------------------------------------------------------------------------
class MessageOut(msgspec.Struct, omit_defaults=True):
    chat_id: UuidStr
    is_user: bool
    content: str
    timestamp: Timestamp
    # Part C: a stable id that sorts as a string in time order, and on AI messages the exchange's charge.
    id: Annotated[str, msgspec.Meta(pattern=MESSAGE_ID_PATTERN)] = ""
    tokens_charged: float | None = None
    truncated: bool = False


class ChatOut(msgspec.Struct):
    chat_id: UuidStr
    created_at: Timestamp
    agent_name: str
    creator_company_name: str
    token_limit: float
    token_used: float
    deleted: bool
    # Always empty (api.md Part A): the history is paged by GET /chats/{chat_id}/messages/.
    messages: Annotated[
        list[MessageOut], msgspec.Meta(max_length=0, description="Always empty: page the history instead.")
    ] = msgspec.field(default_factory=list)


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


def _config_out() -> type[msgspec.Struct]:
    """api.md Part A's Config object: ledger.Branding with the config's id first, and its dates after
    chat_first_page_description, where the spec lists them. Clients of the original service may read
    the fields in that order (tests/http/test_contract.py holds it), which inheritance cannot give."""
    fields: list[tuple[str, Any]] = [("config_id", UuidStr)]
    for field in msgspec.structs.fields(ledger.Branding):
        fields.append((field.name, field.type))
        if field.name == "chat_first_page_description":
            fields += [("created_at", Timestamp), ("updated_at", Timestamp)]
    return msgspec.defstruct("ConfigOut", fields, module=__name__, frozen=True)


ConfigOut = _config_out()


# The data of a streamed reply's events (service/streaming.py; the `done` event's is StreamDone there).
class StreamDelta(msgspec.Struct):
    """One piece of the reply, as the model generated it."""

    content: str


class StreamError(msgspec.Struct):
    """The reply failed after it started: the JSON error the status would have carried, and the status."""

    detail: str
    code: str
    status: int


ENCODER = msgspec.json.Encoder()


def iso_utc(epoch_ms: int) -> str:
    """ISO-8601 UTC, whole seconds, `Z` suffix (api.md Part A)."""
    return _iso_second(epoch_ms // 1000)


# A message's answer is stamped with the second it was settled in, which the messages settled just
# before share: formatting each second once saves most of a datetime's cost per message.
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


def branding_of(config: ledger.Branding) -> dict[str, Any]:
    """A config's branding fields, to build any view of it that builds on ledger.Branding."""
    return {name: getattr(config, name) for name in ledger.Branding.__struct_fields__}


def config_out(config: ledger.ConfigRecord) -> msgspec.Struct:
    return ConfigOut(
        config_id=config.config_id,
        created_at=iso_utc(config.created_ms),
        updated_at=iso_utc(config.updated_ms),
        **branding_of(config),
    )
