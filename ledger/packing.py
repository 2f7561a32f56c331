"""The binary arguments of the reserve and settle scripts (issue 6).

Redis's Lua turns a digit string into a number with strtod, twice per tonumber(): for a reserve's
dozen numeric arguments that cost Redis more than the reserve's writes. The scripts instead take their
numbers in one argument, 8 bytes each, big-endian unsigned, which Redis's struct library unpacks in one
call (`unpack_numbers` in ledger/lua/_prelude.lua), and settle takes its two token counts already in
the 4-byte form it appends to the chat's packed counts (`pack_count` there).
"""

from __future__ import annotations

import struct

_COUNT = struct.Struct(">I")


def pack_numbers(*numbers: int) -> bytes:
    """Non-negative integers below 2^53 (exact in Lua's doubles), 8 bytes each."""
    return struct.pack(f">{len(numbers)}Q", *numbers)


def pack_counts(*counts: int) -> bytes:
    """Token counts as settle appends them to the chat's packed counts: 4 bytes each, big-endian."""
    return b"".join(_COUNT.pack(count) for count in counts)
