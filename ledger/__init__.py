"""The token ledger: every Redis access of chatledger, and nothing of HTTP.

`service/` imports from here only; see design.md section 1.
"""

from __future__ import annotations

from ledger.amounts import from_milli, to_milli, weight_milli
from ledger.connection import (
    RedisClient,
    SentinelTarget,
    connect,
    connect_cluster,
    connect_sentinel,
    embedded_redis,
)
from ledger.durable import Durability
from ledger.errors import (
    ChatDeleted,
    ChatNotDeleted,
    ChatNotFound,
    ConfigNotFound,
    DuplicateInFlight,
    ExchangeReplayed,
    IdempotencyKeyReused,
    InsufficientTokens,
    InvalidAmount,
    LedgerError,
    LedgerUnavailable,
    LimitTooLarge,
    NotReplicated,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationError,
    ReservationExpired,
    ReservationNotFound,
    TokensHeld,
)
from ledger.export import CURSOR_PATTERN as EXPORT_CURSOR_PATTERN
from ledger.export import ExportCursor, ExportedChat, ExportedMessage, ExportPage
from ledger.history import HistoryQuery, parse_message_id
from ledger.idempotency import IdempotencyKey
from ledger.keys import Keyspace, normalize_uuid
from ledger.ledger import Ledger
from ledger.limits import AMOUNT_TOKENS_MAX, LedgerLimits
from ledger.results import (
    Branding,
    ChatPage,
    ChatState,
    ConfigRecord,
    HistoryPage,
    IssuedKey,
    JournalEntry,
    KeyInfo,
    Reconciliation,
    Reservation,
    Settlement,
    StoredMessage,
)
from ledger.tenants import TenantStore

__all__ = [
    "AMOUNT_TOKENS_MAX",
    "EXPORT_CURSOR_PATTERN",
    "Branding",
    "ChatDeleted",
    "ChatNotDeleted",
    "ChatNotFound",
    "ChatPage",
    "ChatState",
    "ConfigNotFound",
    "ConfigRecord",
    "DuplicateInFlight",
    "Durability",
    "ExchangeReplayed",
    "ExportCursor",
    "ExportPage",
    "ExportedChat",
    "ExportedMessage",
    "HistoryPage",
    "HistoryQuery",
    "IdempotencyKey",
    "IdempotencyKeyReused",
    "InsufficientTokens",
    "InvalidAmount",
    "IssuedKey",
    "JournalEntry",
    "KeyInfo",
    "Keyspace",
    "Ledger",
    "LedgerError",
    "LedgerLimits",
    "LedgerUnavailable",
    "LimitTooLarge",
    "NotReplicated",
    "Reconciliation",
    "RedisClient",
    "Reservation",
    "ReservationAlreadySettled",
    "ReservationAlreadyVoided",
    "ReservationError",
    "ReservationExpired",
    "ReservationNotFound",
    "SentinelTarget",
    "Settlement",
    "StoredMessage",
    "TenantStore",
    "TokensHeld",
    "connect",
    "connect_cluster",
    "connect_sentinel",
    "embedded_redis",
    "from_milli",
    "normalize_uuid",
    "parse_message_id",
    "to_milli",
    "weight_milli",
]
