"""Each script's reply is decoded by its own typed decoder (ledger/replies.py): a success into its
Struct, each refusal into its LedgerError, anything else into MalformedReply."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ledger import (
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
)
from ledger.limits import AMOUNT_MILLI_MAX
from ledger.replies import (
    ChatMeta,
    Created,
    CreateReplayed,
    Granted,
    MalformedReply,
    Metered,
    Page,
    ReplyDecoder,
    Settled,
    TopUpReplayed,
    Voided,
    decode_create_chat,
    decode_delete_chat,
    decode_history,
    decode_rate_limit,
    decode_reserve,
    decode_restore_chat,
    decode_settle,
    decode_top_up,
    decode_void,
)

ENTRY = ["1700000000000-1", ["u", "0", "c", "hello", "t", "3", "m", "4000", "f", "t"]]
GRANTED = ["ok", 12_000, 11_000, 100, 2, 20, 400, "1700000000000-1", []]
SETTLED = ["ok", 3_000, 500, "1-0", "1-1", 10_000, 3_000, 0, "0-9", 12]
META = ["config", "c", "limit", "5000"]

# Every decoder with a reply it accepts, and the Struct that reply decodes to.
SUCCESSES: list[tuple[ReplyDecoder[Any], list[Any], object]] = [
    (decode_reserve, GRANTED, Granted(12_000, 11_000, 100, 2, 20, 400, "1700000000000-1", [])),
    (decode_settle, SETTLED, Settled(3_000, 500, "1-0", "1-1", 10_000, 3_000, 0, "0-9", 12)),
    (decode_void, ["ok", 7_000], Voided(7_000)),
    (decode_create_chat, ["ok"], Created()),
    (decode_create_chat, ["replay", META], CreateReplayed(META)),
    (decode_top_up, ["ok", META], ChatMeta(META)),
    (decode_top_up, ["replay", 5_000, 1_000, META], TopUpReplayed(5_000, 1_000, META)),
    (decode_delete_chat, ["ok", META], ChatMeta(META)),
    (decode_restore_chat, ["ok", META], ChatMeta(META)),
    (decode_history, ["ok", 1, [ENTRY]], Page(1, [ENTRY])),
    (decode_rate_limit, [0, 250], Metered(0, 250)),
]

# Every refusal each script may answer (its `Reply:` header), and the error it becomes.
REFUSALS: list[tuple[ReplyDecoder[Any], list[Any], type[LedgerError]]] = [
    (decode_reserve, ["not_found"], ChatNotFound),
    (decode_reserve, ["deleted"], ChatDeleted),
    (decode_reserve, ["in_flight"], DuplicateInFlight),
    (decode_reserve, ["key_reused"], IdempotencyKeyReused),
    (decode_reserve, ["insufficient", 1_000, 2_000, 50_000, 49_000], InsufficientTokens),
    (decode_reserve, ["replay", ENTRY], ExchangeReplayed),
    (decode_settle, ["not_found"], ChatNotFound),
    (decode_settle, ["deleted"], ChatDeleted),
    (decode_settle, ["reservation_not_found"], ReservationNotFound),
    (decode_settle, ["reservation_already_settled"], ReservationAlreadySettled),
    (decode_settle, ["reservation_already_voided"], ReservationAlreadyVoided),
    (decode_settle, ["reservation_expired"], ReservationExpired),
    (decode_void, ["not_found"], ChatNotFound),
    (decode_void, ["reservation_not_found"], ReservationNotFound),
    (decode_void, ["reservation_already_settled"], ReservationAlreadySettled),
    (decode_void, ["reservation_already_voided"], ReservationAlreadyVoided),
    (decode_void, ["reservation_expired"], ReservationExpired),
    (decode_create_chat, ["key_reused"], IdempotencyKeyReused),
    (decode_top_up, ["not_found"], ChatNotFound),
    (decode_top_up, ["deleted"], ChatDeleted),
    (decode_top_up, ["limit_too_large"], LimitTooLarge),
    (decode_top_up, ["key_reused"], IdempotencyKeyReused),
    (decode_delete_chat, ["not_found"], ChatNotFound),
    (decode_delete_chat, ["deleted"], ChatDeleted),
    (decode_restore_chat, ["not_found"], ChatNotFound),
    (decode_restore_chat, ["not_deleted"], ChatNotDeleted),
    (decode_history, ["not_found"], ChatNotFound),
    (decode_history, ["deleted"], ChatDeleted),
]

# Replies no script may give: a wrong length, a wrong type, an unknown status, a status another
# script answers, and no array at all.
MALFORMED: list[tuple[ReplyDecoder[Any], object, str]] = [
    (decode_reserve, GRANTED[:-1], "Expected `array` of at least length 9, got 8"),
    (decode_reserve, [*GRANTED, "extra"], "Expected `array` of at most length"),
    (decode_reserve, ["ok", "12000", *GRANTED[2:]], "Expected `int`, got `str`"),
    (decode_reserve, ["reservation_expired"], "Invalid value 'reservation_expired'"),
    (decode_reserve, ["no_such_status"], "Invalid value 'no_such_status'"),
    (decode_settle, ["ok", 1, 2], "Expected `array` of at least length 10, got 3"),
    (decode_settle, ["in_flight"], "Invalid value 'in_flight'"),
    (decode_void, [], "Expected `array` of at least length 1, got 0"),
    (decode_void, None, "Expected `array`, got `null`"),
    (decode_top_up, ["ok", "config", "c"], "Expected `array`, got `str`"),
    (decode_restore_chat, ["deleted"], "Invalid value 'deleted'"),
    (decode_history, ["ok", 1, "entries"], "Expected `array`, got `str`"),
    (decode_rate_limit, ["ok"], "Expected `array` of at least length 2, got 1"),
]


class TestSuccesses:
    @pytest.mark.parametrize(("decode", "reply", "expected"), SUCCESSES)
    def test_a_success_decodes_to_its_struct(
        self, decode: ReplyDecoder[Any], reply: list[Any], expected: object
    ) -> None:
        """A reply of the script's success shape decodes field by field, by position."""
        assert decode(reply) == expected

    def test_the_context_entries_come_back_as_sent(self) -> None:
        """The entries a reserve returns (ContextMode.IN_REPLY) are handed on untouched, newest first."""
        granted = decode_reserve([*GRANTED[:-1], [ENTRY, ENTRY]])
        assert granted.entries == [ENTRY, ENTRY]


class TestRefusals:
    @pytest.mark.parametrize(("decode", "reply", "error"), REFUSALS)
    def test_each_status_raises_its_ledger_error(
        self, decode: ReplyDecoder[Any], reply: list[Any], error: type[LedgerError]
    ) -> None:
        """Every refusal a script's header names becomes its own LedgerError, and no other."""
        with pytest.raises(LedgerError) as raised:
            decode(reply)
        assert type(raised.value) is error

    def test_insufficient_carries_its_figures(self) -> None:
        """A 402 keeps the figures the script computed, for the error body."""
        with pytest.raises(InsufficientTokens) as raised:
            decode_reserve(["insufficient", 1_000, 2_000, 50_000, 49_000])
        error = raised.value
        assert (error.available_milli, error.needed_milli, error.limit_milli, error.used_milli) == (
            1_000, 2_000, 50_000, 49_000,
        )  # fmt: skip

    def test_a_replay_carries_the_saved_reply(self) -> None:
        """A completed exchange's replay carries its saved reply as a StoredMessage."""
        with pytest.raises(ExchangeReplayed) as raised:
            decode_reserve(["replay", ENTRY])
        message = raised.value.message
        assert (message.message_id, message.content, message.tokens, message.charged_milli) == (
            "0001700000000000-000001", "hello", 3, 4_000,
        )  # fmt: skip
        assert (message.is_user, message.flags) == (False, "t")

    def test_too_large_names_the_bound(self) -> None:
        """A top-up past the bound says what the bound is."""
        with pytest.raises(LimitTooLarge) as raised:
            decode_top_up(["limit_too_large"])
        assert raised.value.max_milli == AMOUNT_MILLI_MAX


class TestMalformed:
    @pytest.mark.parametrize(("decode", "reply", "problem"), MALFORMED)
    def test_a_reply_of_no_known_shape_names_the_script_and_the_problem(
        self, decode: ReplyDecoder[Any], reply: object, problem: str
    ) -> None:
        """A reply the script's header does not allow raises MalformedReply, naming the script, the
        reply and what is wrong with it."""
        with pytest.raises(MalformedReply) as raised:
            decode(reply)
        message = str(raised.value)
        assert message.startswith(f"{raised.value.script}.lua replied {reply!r}: ")
        assert problem in message
        assert raised.value.reply == reply

    def test_a_malformed_reply_is_no_client_error(self) -> None:
        """MalformedReply is a bug (a 500): neither a LedgerError nor msgspec's ValidationError, which
        the service answers as a client's 422."""
        with pytest.raises(MalformedReply) as raised:
            decode_settle(["ok"])
        assert not isinstance(raised.value, LedgerError | msgspec.ValidationError)
        assert raised.value.__cause__ is None
