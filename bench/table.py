"""The run's one table, in Markdown so it can go into docs/performance.md as printed."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class Row(msgspec.Struct, frozen=True, kw_only=True):
    order: int
    figure: str
    ours: str
    baseline: str
    # chatledger's figure over the baseline's: above 1 means more (throughput, latency, bytes).
    ratio: float
    target: str


def render(rows: Sequence[Row], *, command: str, versions: str, options: str) -> str:
    lines = [
        f"`{command}` ({versions})",
        "",
        f"{options}.",
        "",
        "| Figure | chatledger | Baseline, same run | Ratio | Target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in sorted(rows, key=lambda r: r.order):
        cells = [row.figure, row.ours, row.baseline, _ratio(row.ratio), _target(row.target, row.ratio)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def _ratio(ratio: float) -> str:
    # Three decimals where a target sits: 0.4987 must not print as 0.50.
    return f"{ratio:.3f}" if ratio < 10 else f"{ratio:.1f}"


def _target(target: str, ratio: float) -> str:
    """A numeric target ("≥ 0.50", "≤ 2") with whether this run met it; any other text as it is."""
    bound, _, number = target.partition(" ")
    try:
        limit = float(number)
    except ValueError:
        return target
    if bound == "≥":
        return f"{target}: {'met' if ratio >= limit else 'not met'}"
    if bound == "≤":
        return f"{target}: {'met' if ratio <= limit else 'not met'}"
    return target
