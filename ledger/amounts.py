"""Float tokens at the API edge <-> integer milli-tokens in the ledger (design.md section 2).

The conversion goes through the float's shortest decimal repr, so `0.1` is 100 milli-tokens and `0.0005`
rounds half-up to 1, as a person reading the JSON would expect.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

from ledger.errors import InvalidAmount
from ledger.limits import AMOUNT_MILLI_MAX, AMOUNT_TOKENS_MAX, MILLI_PER_TOKEN, WEIGHT_MILLI_MAX

_MILLI = Decimal(1) / MILLI_PER_TOKEN
_TOO_LARGE = f"amount must be at most {AMOUNT_TOKENS_MAX} tokens"


def to_milli(tokens: float, *, positive: bool = False) -> int:
    """Milli-tokens for an API amount; InvalidAmount for NaN, infinities, negatives, zero where a
    positive amount is required, and anything above the ledger's maximum."""
    if isinstance(tokens, bool) or not math.isfinite(tokens):
        raise InvalidAmount("amount must be a finite number")
    if tokens < 0:
        raise InvalidAmount("amount must not be negative")
    exact = Decimal(repr(float(tokens)))
    # Refuse huge values before quantizing: from 1e25 up, quantize exceeds the decimal context's 28 digits
    # and raises decimal.InvalidOperation, which would surface as a 500 instead of a 422.
    if exact > AMOUNT_TOKENS_MAX + 1:
        raise InvalidAmount(_TOO_LARGE)
    milli = int(exact.quantize(_MILLI, rounding=ROUND_HALF_UP) * MILLI_PER_TOKEN)
    if positive and milli == 0:
        raise InvalidAmount("amount must be positive (at least 0.001)")
    if milli > AMOUNT_MILLI_MAX:
        raise InvalidAmount(_TOO_LARGE)
    return milli


def from_milli(milli: int) -> float:
    """The API float for milli-tokens; exact to 3 decimals because every value is below 2^53."""
    return milli / MILLI_PER_TOKEN


def weight_milli(weight: float) -> int:
    """A token weight as integer milli-tokens per token; InvalidAmount unless it is finite, non-negative,
    at most 1000 and exact to 3 decimals, so every charge stays an exact integer (design.md 11)."""
    if isinstance(weight, bool) or not math.isfinite(weight) or not 0 <= weight <= WEIGHT_MILLI_MAX / 1000:
        raise InvalidAmount(f"a weight is a number from 0 to {WEIGHT_MILLI_MAX // 1000}")
    milli = Decimal(repr(float(weight))) * MILLI_PER_TOKEN
    if milli != milli.to_integral_value():
        raise InvalidAmount("a weight has at most 3 decimals")
    return int(milli)
