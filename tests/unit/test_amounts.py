"""Float tokens <-> integer milli-tokens at the API edge (design.md section 2)."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import InvalidAmount, from_milli, to_milli
from ledger.limits import AMOUNT_MILLI_MAX, AMOUNT_TOKENS_MAX


class TestToMilli:
    @pytest.mark.parametrize(
        ("tokens", "milli"),
        [
            (0, 0),
            (0.0, 0),
            (0.1, 100),
            (0.2 + 0.1, 300),
            (1, 1000),
            (1000.0, 1_000_000),
            (2.675, 2675),
            (0.0005, 1),
            (0.0004, 0),
            (0.0015, 2),
            (1.0005, 1001),
            (12.3456, 12346),
            (AMOUNT_TOKENS_MAX, AMOUNT_MILLI_MAX),
            (float(AMOUNT_TOKENS_MAX), AMOUNT_MILLI_MAX),
        ],
    )
    def test_rounds_half_up_on_the_decimal_repr(self, tokens: float, milli: int) -> None:
        """An amount becomes the milli-tokens its printed decimal form rounds to, half-up."""
        assert to_milli(tokens) == milli

    @pytest.mark.parametrize("tokens", [math.nan, math.inf, -math.inf])
    def test_rejects_non_finite(self, tokens: float) -> None:
        """NaN and the infinities are not amounts."""
        with pytest.raises(InvalidAmount, match="finite"):
            to_milli(tokens)

    @pytest.mark.parametrize("tokens", [-0.001, -1, -1e12, -0.0004])
    def test_rejects_negative(self, tokens: float) -> None:
        """A negative amount is refused, even one that would round to zero."""
        with pytest.raises(InvalidAmount, match="negative"):
            to_milli(tokens)

    @pytest.mark.parametrize("tokens", [True, False])
    def test_rejects_bool(self, tokens: bool) -> None:
        """JSON true/false decoded as bool is not a number of tokens, although bool subclasses int."""
        with pytest.raises(InvalidAmount):
            to_milli(tokens)

    @pytest.mark.parametrize(
        "tokens", [AMOUNT_TOKENS_MAX + 0.001, AMOUNT_TOKENS_MAX + 1, 1e13, 1e25, 1e300, 1.7e308]
    )
    def test_rejects_above_the_maximum(self, tokens: float) -> None:
        """Anything above 10^12 tokens is refused, so balances stay exact in Lua doubles."""
        with pytest.raises(InvalidAmount, match="at most"):
            to_milli(tokens)

    def test_accepts_the_maximum(self) -> None:
        """Exactly 10^12 tokens is allowed, also as a positive amount."""
        assert to_milli(10**12, positive=True) == 10**15

    @pytest.mark.parametrize("tokens", [0, 0.0, 0.0004, 0.00001])
    def test_positive_rejects_zero_and_what_rounds_to_zero(self, tokens: float) -> None:
        """Where a positive amount is required, zero and amounts below half a milli-token are refused."""
        with pytest.raises(InvalidAmount, match="positive"):
            to_milli(tokens, positive=True)

    @pytest.mark.parametrize(("tokens", "milli"), [(0.0005, 1), (0.001, 1), (500.0, 500_000)])
    def test_positive_accepts_what_rounds_to_one_or_more(self, tokens: float, milli: int) -> None:
        """A positive amount that rounds to at least one milli-token is accepted."""
        assert to_milli(tokens, positive=True) == milli

    def test_zero_is_fine_when_positive_is_not_required(self) -> None:
        """A token limit of zero is a valid amount (api.md Part B 4: token_limit >= 0)."""
        assert to_milli(0.0004) == 0


class TestFromMilli:
    @pytest.mark.parametrize(("milli", "tokens"), [(0, 0.0), (100, 0.1), (1, 0.001), (2675, 2.675)])
    def test_reads_thousandths(self, milli: int, tokens: float) -> None:
        """Milli-tokens are shown as the float with the same three decimals."""
        assert from_milli(milli) == tokens

    @given(st.integers(min_value=0, max_value=AMOUNT_MILLI_MAX))
    def test_round_trip_is_exact(self, milli: int) -> None:
        """Every storable amount survives the trip to the API float and back unchanged."""
        assert to_milli(from_milli(milli)) == milli

    @given(st.decimals(min_value=0, max_value=AMOUNT_TOKENS_MAX, places=3))
    def test_three_decimal_inputs_are_kept_exactly(self, tokens: Decimal) -> None:
        """A JSON number with at most three decimals is stored as exactly those thousandths."""
        assert to_milli(float(tokens)) == int(tokens * 1000)
