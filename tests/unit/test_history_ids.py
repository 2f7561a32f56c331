"""Message ids: padded stream ids that sort as strings in the chat's order (ledger/history.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import HistoryQuery, parse_message_id
from ledger.history import decode_entry, format_message_id

MS = st.integers(min_value=0, max_value=10**16 - 1)
SEQ = st.integers(min_value=0, max_value=999_999)


class TestFormatMessageId:
    @pytest.mark.parametrize(
        ("entry_id", "message_id"),
        [
            ("1700000000000-0", "0001700000000000-000000"),
            ("0-1", "0000000000000000-000001"),
            ("1700000000123-42", "0001700000000123-000042"),
        ],
    )
    def test_pads_both_parts(self, entry_id: str, message_id: str) -> None:
        """Both parts are zero-padded to a fixed width (16 and 6 digits)."""
        assert format_message_id(entry_id) == message_id

    @given(ms=MS, seq=SEQ)
    def test_round_trips_through_parse(self, ms: int, seq: int) -> None:
        """Parsing a formatted id gives back the raw stream id, and formatting that gives the same id."""
        raw = f"{ms}-{seq}"
        message_id = format_message_id(raw)
        assert parse_message_id(message_id) == raw
        assert format_message_id(raw) == format_message_id(f"{ms:020d}-{seq}")

    @given(st.lists(st.tuples(MS, SEQ), min_size=2, max_size=30, unique=True))
    def test_padded_ids_sort_as_strings_in_time_order(self, parts: list[tuple[int, int]]) -> None:
        """Sorting message ids as strings orders them as the stream does: by time, then sequence."""
        by_time = [format_message_id(f"{ms}-{seq}") for ms, seq in sorted(parts)]
        assert sorted(by_time) == by_time


class TestParseMessageId:
    @pytest.mark.parametrize(
        ("message_id", "raw"),
        [
            ("0001700000000000-000000", "1700000000000-0"),
            ("1700000000000-0", "1700000000000-0"),
            ("0-0", "0-0"),
            ("0001700000000000-0000000042", "1700000000000-42"),
        ],
    )
    def test_accepts_padded_and_raw_forms(self, message_id: str, raw: str) -> None:
        """A cursor may be the padded message id or the raw `ms-seq` stream id."""
        assert parse_message_id(message_id) == raw

    @pytest.mark.parametrize(
        "junk",
        [
            "",
            "-",
            "abc",
            "1700000000000",
            "1700000000000-",
            "-0",
            "1-2-3",
            "-1-0",
            "1.5-0",
            "1-0.5",
            "+1-0",
            "1 -0",
            " 1-0",
            "1-0 ",
            "1-0\n",
            "0x10-0",
            "1e3-0",
            "17000000000000000-0",
            "1-12345678901234567890",
            "١٢٣-٠",
            "1-*",
            "$",
            "(1-0",
        ],
    )
    def test_rejects_junk(self, junk: str) -> None:
        """Anything that is not one or two digit groups of bounded length is not a message id."""
        assert parse_message_id(junk) is None


class TestDecodeEntry:
    def test_reads_the_stream_fields(self) -> None:
        """A stream entry becomes a StoredMessage whose timestamp is the id's time part."""
        message = decode_entry(
            ["1700000000123-4", ["u", "0", "c", "hello", "t", "7", "m", "12500", "f", "ts"]]
        )
        assert message.message_id == "0001700000000123-000004"
        assert message.is_user is False
        assert message.content == "hello"
        assert message.tokens == 7
        assert message.charged_milli == 12500
        assert message.flags == "ts"
        assert message.timestamp_ms == 1700000000123

    def test_a_positional_id_has_its_time_second(self) -> None:
        """`<position>-<time ms>` (settle.lua): the timestamp is the second part; ids sort by the first."""
        message = decode_entry(["42-1764770000123", ["u", "1", "c", "", "t", "0", "m", "0", "f", ""]])
        assert message.message_id == "0000000000000042-1764770000123"
        assert message.timestamp_ms == 1764770000123
        assert parse_message_id(message.message_id) == "42-1764770000123"
        later = decode_entry(["43-1764770000001", ["u", "0", "c", "", "t", "0", "m", "0", "f", ""]])
        assert message.message_id < later.message_id

    def test_user_flag(self) -> None:
        """`u` = "1" marks the user's message."""
        message = decode_entry(["5-0", ["u", "1", "c", "", "t", "0", "m", "0", "f", ""]])
        assert message.is_user is True
        assert message.content == ""


class TestHistoryQuery:
    @pytest.mark.parametrize(
        ("query", "args"),
        [
            (HistoryQuery(limit=10), ("offset", "0")),
            (HistoryQuery(limit=10, offset=25), ("offset", "25")),
            (HistoryQuery(limit=10, after="5-0"), ("after", "5-0")),
            (HistoryQuery(limit=10, before="5-0"), ("before", "5-0")),
        ],
    )
    def test_script_args(self, query: HistoryQuery, args: tuple[str, str]) -> None:
        """A cursor takes precedence over the offset; without one the offset is used."""
        assert query.script_args() == args
