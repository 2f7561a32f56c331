"""The admin API's types: configs with every field, keys, chats with their ledger figures.

Weights are floats here as in the CLI (1.0 = one token per token) and milli-precision integers in the
ledger; `ledger.weight_milli` converts and refuses more than 3 decimals.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NamedTuple, cast, get_args, get_origin

import msgspec

import ledger
from service.schemas import ChatOut, Timestamp, UuidStr, chat_out, iso_utc

SHORT_CHARS_MAX = 256
TEXT_CHARS_MAX = 16_000
URL_CHARS_MAX = 2048
Short = Annotated[str, msgspec.Meta(max_length=SHORT_CHARS_MAX)]
Text = Annotated[str, msgspec.Meta(max_length=TEXT_CHARS_MAX)]
# Exact to 3 decimals (ledger.weight_milli), which the document states as a multiple of 0.001.
Weight = Annotated[float, msgspec.Meta(ge=0, le=1000, extra_json_schema={"multipleOf": 0.001})]
RatePerS = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
UnsetStr = Short | msgspec.UnsetType
# JSON Schema counts 5.0 as an integer, and msgspec's `int` refuses it: these fields are decoded as
# numbers, checked whole and made ints in __post_init__, and documented as integers (service/openapi.py
# turns the `x-type` mark into the schema's type).
_WHOLE = {"x-type": "integer"}
Burst = Annotated[float, msgspec.Meta(ge=0, le=1_000_000, extra_json_schema=_WHOLE)]
OutputTokens = Annotated[float, msgspec.Meta(ge=1, le=1_000_000, extra_json_schema=_WHOLE)]
Calls = Annotated[float, msgspec.Meta(ge=0, le=100_000, extra_json_schema=_WHOLE)]
_WHOLE_FIELDS = ("max_output_tokens", "rate_limit_burst", "model_calls_max")


class ConfigFields(msgspec.Struct, kw_only=True):
    """What an operator may set beyond the branding: the model and the charge. On PATCH only the fields
    present change, so each is optional; ConfigCreate and ConfigPatch add the branding to it."""

    system_prompt: Text | msgspec.UnsetType = msgspec.UNSET
    model: UnsetStr = msgspec.UNSET
    max_output_tokens: OutputTokens | msgspec.UnsetType = msgspec.UNSET
    temperature: Temperature | msgspec.UnsetType | None = msgspec.UNSET
    prompt_token_weight: Weight | msgspec.UnsetType = msgspec.UNSET
    completion_token_weight: Weight | msgspec.UnsetType = msgspec.UNSET
    rate_limit_per_s: RatePerS | msgspec.UnsetType = msgspec.UNSET
    rate_limit_burst: Burst | msgspec.UnsetType = msgspec.UNSET
    # Model calls running at once per worker; 0 takes CHATLEDGER_MODEL_CALLS_PER_CONFIG.
    model_calls_max: Calls | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        for name in _WHOLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, float):
                if not value.is_integer():
                    # msgspec reports a ValueError from here as a ValidationError: a 422.
                    raise ValueError(f"{name} must be a whole number")
                setattr(self, name, int(value))

    def record_fields(self) -> dict[str, Any]:
        """The fields present, as ConfigRecord keyword arguments (weights in milli-tokens)."""
        present = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not msgspec.UNSET}
        for api_name, record_name in (
            ("prompt_token_weight", "prompt_weight_milli"),
            ("completion_token_weight", "completion_weight_milli"),
        ):
            if api_name in present:
                present[record_name] = ledger.weight_milli(present.pop(api_name))
        return present


class BrandingField(NamedTuple):
    """One field of ledger.Branding, as the admin API's input and the CLI's options are made of it."""

    name: str
    annotation: Any  # the field's type, with its description
    kind: type  # str or bool
    description: str
    required: bool  # on a create: a new config has no default for it


def branding_fields() -> list[BrandingField]:
    fields = []
    for field in msgspec.structs.fields(ledger.Branding):
        kind, *metas = get_args(field.type) if get_origin(field.type) is Annotated else (field.type,)
        description = next((m.description for m in metas if isinstance(m, msgspec.Meta)), None)
        assert description, f"ledger.Branding.{field.name} says what it is: the CLI shows it as help"
        fields.append(BrandingField(field.name, field.type, kind, description, field.required))
    return fields


# The most characters an operator may give a branding text: a line, unless it is one of these.
_TEXT_CHARS_MAX = {
    "logo_url": URL_CHARS_MAX,
    "welcome_message": TEXT_CHARS_MAX,
    "chat_first_page_description": TEXT_CHARS_MAX,
}


def _branding_input(*, create: bool) -> list[tuple[str, Any] | tuple[str, Any, Any]]:
    """The branding as an operator sends it: every text bounded, every field optional but, on a
    create, those a new config has no default for."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in branding_fields():
        kind = field.annotation
        if field.kind is str:
            limit = msgspec.Meta(max_length=_TEXT_CHARS_MAX.get(field.name, SHORT_CHARS_MAX))
            kind = operator.getitem(Annotated, (kind, limit))
        if create and field.required:
            fields.append((field.name, kind))
        else:
            fields.append((field.name, kind | msgspec.UnsetType, msgspec.UNSET))
    return fields


def _config_input(name: str, *, create: bool) -> type[ConfigFields]:
    made = msgspec.defstruct(
        name, _branding_input(create=create), bases=(ConfigFields,), kw_only=True, module=__name__
    )
    return cast(type[ConfigFields], made)


# Built from ledger.Branding, so a branding field the ledger gains can be set at once.
ConfigCreate = _config_input("ConfigCreate", create=True)
ConfigPatch = _config_input("ConfigPatch", create=False)


class _IdentifiedBranding(ledger.Branding, frozen=True):
    # Not keyword-only, so the id comes before the branding on the wire.
    config_id: UuidStr


class AdminConfig(_IdentifiedBranding, kw_only=True, frozen=True):
    """A config with every field: its branding, then what only operators see."""

    system_prompt: str
    model: str
    max_output_tokens: int
    temperature: float | None
    prompt_token_weight: float
    completion_token_weight: float
    rate_limit_per_s: float
    rate_limit_burst: int
    model_calls_max: int
    created_at: Timestamp
    updated_at: Timestamp


class AdminConfigList(msgspec.Struct):
    items: list[AdminConfig]


class IssuedKeyOut(msgspec.Struct, kw_only=True):
    """The only answer that carries a key in the clear: store it now, it is not shown again."""

    key_id: str
    api_key: str
    config_id: UuidStr
    created_at: Timestamp


class KeyOut(msgspec.Struct, kw_only=True):
    key_id: str
    prefix: str
    created_at: Timestamp


class KeyList(msgspec.Struct):
    items: list[KeyOut]


class AdminChat(ChatOut, kw_only=True):
    config_id: UuidStr
    token_reserved: float
    deleted_at: Timestamp | None
    reservations_expired: int
    tokens_clamped: float


class JournalEntryOut(msgspec.Struct, kw_only=True):
    id: str
    op: str
    reservation_id: str
    used_delta: float
    reserved_delta: float
    limit_delta: float
    shortfall: float
    timestamp: Timestamp


class JournalQuery(msgspec.Struct, frozen=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    after: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,16}-[0-9]{1,10}$")] | None = None


class JournalPage(msgspec.Struct):
    items: list[JournalEntryOut]


class ReconciliationOut(msgspec.Struct, kw_only=True):
    """The journal's sums against the chat's counters; `ok` when they agree to the milli-token."""

    ok: bool
    entries: int
    token_used: float
    token_reserved: float
    token_limit: float
    journal_used: float
    journal_reserved: float
    journal_limit: float
    reservations_expired: int
    tokens_clamped: float


class Done(msgspec.Struct):
    done: bool


class EraseQuery(msgspec.Struct, frozen=True):
    """Without `erase` a DELETE is the soft delete; with it every record goes and nothing can restore it."""

    erase: bool = False


# AdminConfig's fields that the record holds under the same name and as they are shown.
_AS_STORED = [name for name in AdminConfig.__struct_fields__ if name in ledger.ConfigRecord.__struct_fields__]


def admin_config(config: ledger.ConfigRecord) -> AdminConfig:
    """The record's fields, the weights as floats (1.0 = one token per token) and the dates as ISO."""
    return AdminConfig(
        **{name: getattr(config, name) for name in _AS_STORED},
        prompt_token_weight=config.prompt_weight_milli / 1000,
        completion_token_weight=config.completion_weight_milli / 1000,
        created_at=iso_utc(config.created_ms),
        updated_at=iso_utc(config.updated_ms),
    )


def admin_chat(chat: ledger.ChatState) -> AdminChat:
    """The public Chat object's fields (one mapping, service/schemas.py), plus the ledger's figures."""
    return AdminChat(
        **msgspec.structs.asdict(chat_out(chat)),
        config_id=chat.config_id,
        token_reserved=ledger.from_milli(chat.reserved_milli),
        deleted_at=iso_utc(chat.deleted_ms) if chat.deleted else None,
        reservations_expired=chat.expired,
        tokens_clamped=ledger.from_milli(chat.clamped_milli),
    )


def journal_entry(entry: ledger.JournalEntry) -> JournalEntryOut:
    return JournalEntryOut(
        id=entry.entry_id,
        op=entry.op,
        reservation_id=entry.reservation_id,
        used_delta=ledger.from_milli(entry.used_delta_milli),
        reserved_delta=ledger.from_milli(entry.reserved_delta_milli),
        limit_delta=ledger.from_milli(entry.limit_delta_milli),
        shortfall=ledger.from_milli(entry.clamped_milli),
        timestamp=iso_utc(entry.timestamp_ms),
    )


def reconciliation(result: ledger.Reconciliation) -> ReconciliationOut:
    return ReconciliationOut(
        ok=result.ok,
        entries=result.entries,
        token_used=ledger.from_milli(result.chat.used_milli),
        token_reserved=ledger.from_milli(result.chat.reserved_milli),
        token_limit=ledger.from_milli(result.chat.limit_milli),
        journal_used=ledger.from_milli(result.used_sum_milli),
        journal_reserved=ledger.from_milli(result.reserved_sum_milli),
        journal_limit=ledger.from_milli(result.limit_sum_milli),
        reservations_expired=result.expired,
        tokens_clamped=ledger.from_milli(result.clamped_milli),
    )
