"""The benchmark runner still runs: `python -m bench --smoke`, tiny counts, every row printed.

It never judges speed: a timed assertion would fail on a busy machine and prove nothing. The figures
are for people reading the table in docs/performance.md, made by the full run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Bounds a hung run only; the smoke run takes a few seconds.
RUN_TIMEOUT_S = 300

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROWS = [
    "`POST /chats/messages/`, 1 worker |",
    "`POST /chats/messages/`, 1 worker, against the fastest bare handler |",
    "`POST /chats/messages/`, 2 workers |",
    "`POST /chats/messages/`, 2 workers, against the fastest bare handler |",
    "History first page",
    "History cursor page from the middle",
    "History offset page in the middle",
    "History page of 50 at offset",
    "Slowest Redis call of the API's requests",
    "Redis round trips per message |",
    "Redis memory per message sent through the API",
    "Redis memory per message, history stream alone",
    "Ledger alone: reserve+settle pairs/s",
    "`openai` provider, non-streamed, 1 worker",
    "`openai` provider, streamed, 1 worker",
    "`openai` provider, non-streamed, against the offline model",
    "`openai` provider, streamed against non-streamed",
    "Fairness, 1 worker, share 32:",
    "`POST /chats/messages/`, 2 workers, `CHATLEDGER_DURABILITY=replica`",
    "`CHATLEDGER_DURABILITY=replica`, p99 latency",
]


def test_smoke_run_prints_every_row() -> None:
    """The smoke run exits 0 and prints the table header and one line per figure, each with a ratio."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "| Figure | chatledger | Baseline, same run | Ratio | Target |" in lines
    for row in ROWS:
        matching = [line for line in lines if line.startswith(f"| {row}")]
        assert len(matching) == 1, f"no single row {row!r} in:\n{done.stdout}"
        cells = [cell.strip() for cell in matching[0].strip("|").split(" | ")]
        assert len(cells) == 5
        float(cells[3])
