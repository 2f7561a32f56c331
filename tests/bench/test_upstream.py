"""The upstream rows run alone: `python -m bench.upstream --smoke`, each row with its ratio and target.

The run checks, before it measures, that each server answers a message (and a streamed one with its
`done` event), so a broken fake model or proxy fails here rather than showing as fast. Never a speed.
"""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from bench import fake_model
from service.providers.openai import _CHUNK_DECODER, _RESPONSE_DECODER
from tests.bench.test_smoke import ROOT, RUN_TIMEOUT_S

ROWS = [
    "`openai` provider, non-streamed, 1 worker",
    "`openai` provider, streamed, 1 worker",
    "`openai` provider, non-streamed, against the offline model",
    "`openai` provider, streamed against non-streamed",
]


def test_fake_model_answers_are_chat_completions() -> None:
    """The canned answers read as the provider reads them: the same reply, whole and streamed."""
    whole = _RESPONSE_DECODER.decode(fake_model.whole_body())
    assert whole.choices[0].message.content == "".join(fake_model.REPLY)
    events = fake_model.stream_events()
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [_CHUNK_DECODER.decode(e.removeprefix(b"data: ")) for e in events[:-1]]
    deltas = [c.delta.content for chunk in chunks for c in chunk.choices or () if c.delta and c.delta.content]
    assert deltas == fake_model.REPLY
    assert msgspec.json.decode(chunks[-1].usage)["completion_tokens"] == len(fake_model.REPLY)


@pytest.mark.redis
@pytest.mark.slow
def test_upstream_smoke_prints_its_rows() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.upstream", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for row in ROWS:
        matching = [line for line in lines if line.startswith(f"| {row}")]
        assert len(matching) == 1, f"no single row {row!r} in:\n{done.stdout}"
        cells = [cell.strip() for cell in matching[0].strip("|").split(" | ")]
        float(cells[3])
        assert cells[4].endswith(("met", "not met")), cells[4]
        assert "worker CPU" in cells[1]
        assert "worker CPU" in cells[2]
