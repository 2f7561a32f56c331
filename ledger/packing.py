"""The binary numbers of the reserve and settle scripts.

Redis's Lua turns a digit string into a number with strtod, twice per tonumber(), and for a reserve's
dozen numeric arguments that cost Redis more than the reserve's writes. The scripts instead take their
numbers in one argument, 8 bytes each, big-endian unsigned, which Redis's struct library unpacks in one
call (`unpack_numbers` in ledger/lua/_prelude.lua).
"""

from __future__ import annotations

import struct

# A compiled format per number of numbers (the scripts use two): no format string built per call.
_NUMBERS: dict[int, struct.Struct] = {}


def pack_numbers(*numbers: int) -> bytes:
    """Non-negative integers below 2^53 (exact in Lua's doubles), 8 bytes each."""
    packer = _NUMBERS.get(len(numbers))
    if packer is None:
        packer = _NUMBERS[len(numbers)] = struct.Struct(f">{len(numbers)}Q")
    return packer.pack(*numbers)
