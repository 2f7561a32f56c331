"""The run's one table, in Markdown so it can go into the README as printed."""

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
        cells = [row.figure, row.ours, row.baseline, f"{row.ratio:.2f}", row.target]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
