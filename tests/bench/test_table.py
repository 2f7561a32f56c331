"""The table says whether a run met each numeric target, and never rounds a miss up to the target."""

from __future__ import annotations

import pytest

from bench.table import Row, render


def _rendered(ratio: float, target: str) -> list[str]:
    row = Row(order=1, figure="f", ours="o", baseline="b", ratio=ratio, target=target)
    line = render([row], command="c", versions="v", options="o").splitlines()[-1]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


@pytest.mark.parametrize(
    ("ratio", "target", "shown", "verdict"),
    [
        (0.4987, "≥ 0.50", "0.499", "≥ 0.50: not met"),
        (0.5, "≥ 0.50", "0.500", "≥ 0.50: met"),
        (1.33, "≤ 2", "1.330", "≤ 2: met"),
        (2.01, "≤ 2", "2.010", "≤ 2: not met"),
        (1.01, "2 per message", "1.010", "2 per message"),
        (924.02, "", "924.0", ""),
    ],
)
def test_ratio_and_verdict(ratio: float, target: str, shown: str, verdict: str) -> None:
    assert _rendered(ratio, target)[3:] == [shown, verdict]
