"""The typed values the ledger returns. Amounts are integer milli-tokens, times are epoch milliseconds;
the service turns them into the API's floats and ISO strings at the edge."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ledger.idempotency import IdempotencyKey


class Branding(msgspec.Struct, kw_only=True, frozen=True):
    """How a config's chat UI looks: the API's Config object without its ids and dates (api.md Part A).
    The defaults are what a new config starts with. The service's views of a config (public, admin,
    widget), the admin API's input and the CLI's options are built from this struct, so a field added
    here reaches all of them; each description is their help text."""

    agent_name: Annotated[str, msgspec.Meta(description="name the assistant answers as")]
    company_name: Annotated[str, msgspec.Meta(description="company the chat UI presents")]
    primary_color: Annotated[str, msgspec.Meta(description="UI colour, e.g. #1A73E8")] = "#1A73E8"
    header_text: Annotated[str, msgspec.Meta(description="text of the chat header")] = ""
    logo_url: Annotated[str, msgspec.Meta(description="logo shown on the start page")] = ""
    welcome_message: Annotated[
        str, msgspec.Meta(description="first message the UI shows (not stored in history)")
    ] = ""
    chat_first_page_description: Annotated[str, msgspec.Meta(description="text on the start page")] = ""
    is_full_width: Annotated[bool, msgspec.Meta(description="full-width chat layout")] = False
    start_page_title: Annotated[str, msgspec.Meta(description="title of the start page")] = ""
    start_page_slogan: Annotated[str, msgspec.Meta(description="slogan of the start page")] = ""


class ConfigRecord(Branding, kw_only=True, frozen=True):
    """A chat configuration: the tenant. Its branding, then what steers the model and the charge."""

    config_id: str
    created_ms: int = 0
    updated_ms: int = 0
    system_prompt: str = ""
    model: str = ""
    max_output_tokens: int = 512
    # Sampling temperature sent to the model; None leaves the upstream's default.
    temperature: float | None = None
    # Charge per prompt / completion token, in milli-tokens: 1000 is a weight of 1.0 (design.md section 2).
    prompt_weight_milli: int = 1000
    completion_weight_milli: int = 1000
    # Requests per second each API key of this config may make, with this burst; 0 means no limit.
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int = 0
    # Model calls the config may have running at once on each worker; 0 means the worker's default.
    model_calls_max: int = 0


class ChatState(msgspec.Struct, kw_only=True, frozen=True):
    chat_id: str
    config_id: str
    created_ms: int
    agent_name: str
    company_name: str
    limit_milli: int
    used_milli: int
    reserved_milli: int
    deleted: bool
    deleted_ms: int
    # Holds of dead workers reclaimed, and milli-tokens exchanges cost beyond their holds (not charged).
    expired: int = 0
    clamped_milli: int = 0


class ChatPage(msgspec.Struct, kw_only=True, frozen=True):
    items: list[ChatState]
    total: int


class StoredMessage(msgspec.Struct, kw_only=True, frozen=True):
    """One history entry. `message_id` is the stream entry id; `timestamp_ms` is its time part."""

    message_id: str
    is_user: bool
    content: str
    # The content's length in tokens by the service's counter, so a later reserve can price context.
    tokens: int
    # On an AI message: what the exchange (prompt and reply) was charged.
    charged_milli: int
    # Letters: 't' truncated reply, 's' charge clamped at the hold, 'e' usage estimated.
    flags: str
    timestamp_ms: int


class HistoryPage(msgspec.Struct, kw_only=True, frozen=True):
    items: list[StoredMessage]
    total: int


class Reservation(msgspec.Struct, kw_only=True, frozen=True):
    """A granted hold: enough for the priced prompt plus `completion_tokens_max` reply tokens."""

    chat_id: str
    reservation_id: str
    granted_milli: int
    prompt_milli: int
    completion_tokens_max: int
    # The recent history that fit the context budget, oldest first.
    context: list[StoredMessage]
    # The request's Idempotency-Key: the settle marks its record done.
    idempotency: IdempotencyKey | None = None
    # Holds of dead workers this reserve reclaimed on the chat (past their deadline).
    reclaimed: int = 0


class Settlement(msgspec.Struct, kw_only=True, frozen=True):
    charged_milli: int
    # What the actual cost exceeded the hold by: recorded, never charged.
    clamped_milli: int
    user_message: StoredMessage
    ai_message: StoredMessage
    limit_milli: int
    used_milli: int
    reserved_milli: int


class IssuedKey(msgspec.Struct, kw_only=True, frozen=True):
    """A new API key: the only time its plain value exists outside the client."""

    api_key: str
    key_id: str
    config_id: str
    created_ms: int


class KeyInfo(msgspec.Struct, kw_only=True, frozen=True):
    key_id: str
    prefix: str
    created_ms: int


class JournalEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One balance move. `op` is create, reserve, settle, void, expire or top_up; the deltas are what
    it did to used, reserved and limit, in milli-tokens."""

    entry_id: str
    op: str
    reservation_id: str
    used_delta_milli: int
    reserved_delta_milli: int
    limit_delta_milli: int
    # What a settle's cost exceeded its hold by (recorded, not charged); 0 for every other move.
    clamped_milli: int
    timestamp_ms: int


class Reconciliation(msgspec.Struct, kw_only=True, frozen=True):
    """The journal's sums against the chat's counters: `ok` when every counter equals its sum."""

    chat: ChatState
    entries: int
    used_sum_milli: int
    reserved_sum_milli: int
    limit_sum_milli: int
    expired: int
    clamped_milli: int

    @property
    def ok(self) -> bool:
        return (self.used_sum_milli, self.reserved_sum_milli, self.limit_sum_milli) == (
            self.chat.used_milli,
            self.chat.reserved_milli,
            self.chat.limit_milli,
        )
