"""The fairness row runs alone: `python -m bench.fairness --smoke` prints it with its ratio and target.

It never judges the latency (a timed assertion proves nothing on a busy machine); it checks the run
works and that config A was refused with 429 past its model calls while B was measured.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.bench.test_smoke import ROOT, RUN_TIMEOUT_S

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_fairness_smoke_prints_its_row() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.fairness", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| Fairness, 1 worker")]
    assert len(rows) == 1, done.stdout
    cells = [cell.strip() for cell in rows[0].strip("|").split(" | ")]
    float(cells[3])
    assert cells[4].startswith("≤ 1: ")
    assert "× 429" in cells[1]
    assert "errors" not in cells[1]
