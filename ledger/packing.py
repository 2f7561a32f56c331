"""The binary arguments of the reserve and settle scripts (issue 6).

Redis's Lua turns a digit string into a number with strtod, twice per tonumber(): for a reserve's
dozen numeric arguments that cost Redis more than the reserve's writes. The scripts instead take their
numbers in one argument, 8 bytes each, big-endian unsigned, which Redis's struct library unpacks in one
call (`unpack_numbers` in ledger/lua/_prelude.lua), and settle takes its two token counts already in
the 4-byte form it appends to the chat's packed counts (`pack_count` there).
"""

from __future__ import annotations

import struct

_TWO_COUNTS = struct.Struct(">II")
# A compiled format per number of numbers (the scripts use two): no format string built per call.
_NUMBERS: dict[int, struct.Struct] = {}


def pack_numbers(*numbers: int) -> bytes:
    """Non-negative integers below 2^53 (exact in Lua's doubles), 8 bytes each."""
    packer = _NUMBERS.get(len(numbers))
    if packer is None:
        packer = _NUMBERS[len(numbers)] = struct.Struct(f">{len(numbers)}Q")
    return packer.pack(*numbers)


def pack_counts(first: int, second: int) -> bytes:
    """Two token counts as settle appends them to the chat's packed counts: 4 bytes each, big-endian."""
    return _TWO_COUNTS.pack(first, second)
