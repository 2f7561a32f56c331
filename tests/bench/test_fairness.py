"""The fairness rows' runner works (bench/fairness.py) and shows what the shares do; speed is never
judged here (docs/performance.md has the figures of a full run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Bounds a hung run only.
RUN_TIMEOUT_S = 300

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_with_shares_a_gets_its_share_and_429s_and_b_is_answered() -> None:
    """`python -m bench.fairness --smoke`: with a share of 32, config A's 500 streams are 32 answered and
    468 refused with 429, and every message of config B is answered; without shares, A fills the
    worker's in-flight cap (100) and B is refused with 503."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.fairness", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shared = next(
        line for line in done.stdout.splitlines() if line.startswith("| Fairness, 1 worker, share 32")
    )
    unshared = next(
        line for line in done.stdout.splitlines() if line.startswith("| Fairness, 1 worker, no share")
    )
    assert "B: p50 " in shared
    assert "(5 × 200)" in shared
    # A's streams past its share are refused with 429; a few may meet the in-flight cap (503) first,
    # while the refusals of 500 requests sent at once are in flight together.
    a_answers = re.search(r"A: 32 × 200, (.*?);", shared)
    assert a_answers, shared
    statuses = [status for _count, status in re.findall(r"([\d,]+) × (\d+)", a_answers[1])]
    assert set(statuses) <= {"429", "503"}
    assert "429" in statuses
    assert "B: 5 × 503" in unshared
    assert "A: 100 × 200, 400 × 503" in unshared
