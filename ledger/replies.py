"""A typed decoder for every script's reply (the `Reply:` header of each ledger/lua/*.lua).

A script answers an array whose first element is its status (style.md 5): "ok" and its figures, or a
refusal such as "not_found". Each shape is a msgspec Struct with `array_like=True`, tagged by that
status, so a reply is checked and decoded in one C call, and a refusal becomes its LedgerError here.
A reply that matches no shape is a bug in a script or in its caller, never a client's doing: it raises
MalformedReply (a 500), not msgspec's ValidationError, which the service would answer as a 422.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeAlias, TypeVar, Union, cast

import msgspec

from ledger.errors import (
    ChatDeleted,
    ChatNotDeleted,
    ChatNotFound,
    DuplicateInFlight,
    ExchangeReplayed,
    IdempotencyKeyReused,
    InsufficientTokens,
    LedgerError,
    LimitTooLarge,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationExpired,
    ReservationNotFound,
    TokensHeld,
)
from ledger.history import decode_entry

T = TypeVar("T")

# A stream entry as Redis returns it: its id, then its fields and values in one flat list.
Entry: TypeAlias = list[Any]


class MalformedReply(Exception):
    """A script answered something its `Reply:` header does not allow."""

    def __init__(self, script: str, reply: object, problem: str) -> None:
        super().__init__(f"{script}.lua replied {reply!r}: {problem}")
        self.script = script
        self.reply = reply


class Shape(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A reply's shape: an array read by position, no element missing and none left over."""


# --- refusals: statuses that become a LedgerError ---------------------------------------------------
class Refusal(Shape, frozen=True):
    """A status that is not a success; `error()` is the LedgerError it means."""

    exception: ClassVar[type[LedgerError]]

    def error(self) -> LedgerError:
        return self.exception()


def _refusal(status: str, exception: type[LedgerError]) -> type[Refusal]:
    """The shape of a refusal that is its status alone."""
    shape = msgspec.defstruct(
        f"Refused_{status}", [], bases=(Refusal,), namespace={"exception": exception}, tag=status, frozen=True
    )
    return cast(type[Refusal], shape)


# Every refusal that is its status alone, by the status the scripts answer.
_REFUSALS = {
    status: _refusal(status, exception)
    for status, exception in [
        ("not_found", ChatNotFound),
        ("deleted", ChatDeleted),
        ("not_deleted", ChatNotDeleted),
        ("in_flight", DuplicateInFlight),
        ("key_reused", IdempotencyKeyReused),
        ("limit_too_large", LimitTooLarge),
        ("reservation_not_found", ReservationNotFound),
        ("reservation_already_settled", ReservationAlreadySettled),
        ("reservation_already_voided", ReservationAlreadyVoided),
        ("reservation_expired", ReservationExpired),
    ]
}


def refused(*statuses: str) -> tuple[type[Refusal], ...]:
    """The shapes of these refusals, named as the scripts' `Reply:` headers name them."""
    return tuple(_REFUSALS[status] for status in statuses)


class Insufficient(Refusal, frozen=True, tag="insufficient"):
    available_milli: int
    needed_milli: int
    limit_milli: int
    used_milli: int

    def error(self) -> LedgerError:
        return InsufficientTokens(
            available_milli=self.available_milli,
            needed_milli=self.needed_milli,
            limit_milli=self.limit_milli,
            used_milli=self.used_milli,
        )


class Held(Refusal, frozen=True, tag="held"):
    available_milli: int
    needed_milli: int
    limit_milli: int
    used_milli: int
    reserved_milli: int

    def error(self) -> LedgerError:
        return TokensHeld(
            available_milli=self.available_milli,
            needed_milli=self.needed_milli,
            limit_milli=self.limit_milli,
            used_milli=self.used_milli,
            reserved_milli=self.reserved_milli,
        )


class Replayed(Refusal, frozen=True, tag="replay"):
    """The Idempotency-Key's exchange completed: its saved reply, to be answered again."""

    entry: Entry

    def error(self) -> LedgerError:
        return ExchangeReplayed(decode_entry(self.entry))


# --- successes ----------------------------------------------------------------------------------------
class Granted(Shape, frozen=True, tag="ok"):
    """reserve.lua's hold. The context is the newest `context_count` messages of a stream of `length`
    whose newest id is `newest_id`; `entries` holds them only when the script was asked to return them
    (ContextMode.IN_REPLY), and is empty otherwise."""

    granted_milli: int
    prompt_milli: int
    completion_tokens: int
    reclaimed: int
    context_count: int
    length: int
    newest_id: str
    entries: list[Entry]


class Settled(Shape, frozen=True, tag="ok"):
    """settle.lua's charge. `previous_id` is the newest message before the pair ('' for none, or when
    the chat keeps no token counts) and `length` the stream's length after it."""

    charged_milli: int
    clamped_milli: int
    user_id: str
    reply_id: str
    limit_milli: int
    used_milli: int
    reserved_milli: int
    previous_id: str
    length: int


class Voided(Shape, frozen=True, tag="ok"):
    released_milli: int


class ChatMeta(Shape, frozen=True, tag="ok"):
    """The chat's meta hash after the change, as HGETALL returns it: fields and values in turn."""

    fields: list[str]


class Created(Shape, frozen=True, tag="ok"):
    pass


class CreateReplayed(Shape, frozen=True, tag="replay"):
    """The chat this Idempotency-Key created: its meta hash now."""

    fields: list[str]


class TopUpReplayed(Shape, frozen=True, tag="replay"):
    """The key's top-up happened before: the balance it answered, then the meta hash now."""

    limit_milli: int
    used_milli: int
    fields: list[str]


class Page(Shape, frozen=True, tag="ok"):
    total: int
    entries: list[Entry]


class Erased(Shape, frozen=True, tag="ok"):
    """erase_chat.lua: the config the chat was erased from ('' when nothing of it was left), whether its
    meta hash was still there, and whether idempotency records are left for another call."""

    config_id: str
    existed: int
    more: int


class Kept(Shape, frozen=True, tag="kept"):
    """erase_chat.lua left the chat alone: it is not deleted, or not for long enough."""


class Metered(Shape, frozen=True):
    """rate_limit.lua: allowed (1) or not (0), and the milliseconds to wait when not."""

    allowed: int
    retry_after_ms: int


# --- one decoder per script ---------------------------------------------------------------------------
class ReplyDecoder(Generic[T]):
    """One script's reply as T, the Struct of its success; a refusal is raised as its LedgerError.

    msgspec caches a Struct's type information but not a bare Union's, so the shapes are the one field
    of a wrapper Struct, whose information is built once rather than for every reply."""

    __slots__ = ("_script", "_wrapper")

    def __init__(self, script: str, *shapes: type[Shape]) -> None:
        self._script = script
        union = Union[shapes]  # type: ignore[valid-type]  # noqa: UP007
        self._wrapper: type[Any] = msgspec.defstruct(f"{script}_reply", [("reply", union)], array_like=True)

    def __call__(self, reply: Any) -> T:
        try:
            decoded = msgspec.convert((reply,), self._wrapper).reply
        except msgspec.ValidationError as exc:
            raise MalformedReply(self._script, reply, str(exc)) from None
        if isinstance(decoded, Refusal):
            raise decoded.error()
        result: T = decoded
        return result


# The refusals of settle and void, from the prelude's open_reservation.
_RESOLVING = (
    "not_found",
    "reservation_not_found",
    "reservation_already_settled",
    "reservation_already_voided",
    "reservation_expired",
)

decode_reserve: ReplyDecoder[Granted] = ReplyDecoder(
    "reserve",
    Granted,
    Insufficient,
    Held,
    Replayed,
    *refused("not_found", "deleted", "in_flight", "key_reused"),
)
decode_settle: ReplyDecoder[Settled] = ReplyDecoder("settle", Settled, *refused("deleted", *_RESOLVING))
decode_void: ReplyDecoder[Voided] = ReplyDecoder("void", Voided, *refused(*_RESOLVING))
decode_create_chat: ReplyDecoder[Created | CreateReplayed] = ReplyDecoder(
    "create_chat", Created, CreateReplayed, *refused("key_reused")
)
decode_top_up: ReplyDecoder[ChatMeta | TopUpReplayed] = ReplyDecoder(
    "top_up", ChatMeta, TopUpReplayed, *refused("not_found", "deleted", "limit_too_large", "key_reused")
)
decode_delete_chat: ReplyDecoder[ChatMeta] = ReplyDecoder(
    "delete_chat", ChatMeta, *refused("not_found", "deleted")
)
decode_restore_chat: ReplyDecoder[ChatMeta] = ReplyDecoder(
    "restore_chat", ChatMeta, *refused("not_found", "not_deleted")
)
decode_inspect_chat: ReplyDecoder[ChatMeta] = ReplyDecoder("inspect_chat", ChatMeta, *refused("not_found"))
decode_history: ReplyDecoder[Page] = ReplyDecoder("history", Page, *refused("not_found", "deleted"))
decode_erase_chat: ReplyDecoder[Erased | Kept] = ReplyDecoder(
    "erase_chat", Erased, Kept, *refused("not_found")
)
decode_rate_limit: ReplyDecoder[Metered] = ReplyDecoder("rate_limit", Metered)
