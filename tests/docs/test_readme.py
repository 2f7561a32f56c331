"""The README as a newcomer follows it: its walk-through runs as written against the service started
the way it says, and answers what it shows; its Quick start names what the tests need."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.conftest import Started
from tests.docs.walkthrough import (
    DEFAULT_BASE_URL,
    README,
    ROOT,
    parse_block,
    run_step,
    section,
    shell_blocks,
    walkthrough,
)


class TestWalkthroughParsing:
    """The parser reads commands, answers, continuations and elisions as the README writes them."""

    def test_a_block(self) -> None:
        """Continued commands are joined, answer lines split and joined, and the status is read."""
        steps = parse_block(
            'export X=$(curl -s $B/a \\\n    | python3 -c "...")\n'
            'curl -si $B/b\n# HTTP/1.1 404 Not Found\n# ...\n# {"a":1,\n#  "b":2}\n'
        )
        assert [s.command for s in steps] == ['export X=$(curl -s $B/a | python3 -c "...")', "curl -si $B/b"]
        assert steps[1].answer == ["HTTP/1.1 404 Not Found", "...", '{"a":1,"b":2}']
        assert (steps[0].expected_status, steps[1].expected_status) == (200, 404)
        pattern = steps[1].pattern()
        assert pattern.fullmatch('HTTP/1.1 404 Not Found\nX-Request-ID: 1\n\n{"a":1,"b":2}')
        assert not pattern.fullmatch('HTTP/1.1 404 Not Found\nX-Request-ID: 1\n\n{"a":1,"b":3}')

    def test_volatile_values(self) -> None:
        """Ids and times stand for any of their form, and nothing else."""
        (step,) = parse_block('curl x\n# {"id":"0001796292561985-000001","at":"2026-12-03T10:09:21Z"}\n')
        assert step.pattern().fullmatch('{"id":"0001796292999999-000007","at":"2027-01-01T00:00:00Z"}')
        assert not step.pattern().fullmatch('{"id":"1-7","at":"2027-01-01T00:00:00Z"}')


@pytest.mark.slow
class TestWalkthrough:
    """Every command of the walk-through, run in order on a fresh `make run`, exits 0, answers the
    status it shows (200 unless an HTTP status line says otherwise) and prints what it shows."""

    def test_runs_as_written(self, readme_service: Started, tmp_path: Path) -> None:
        """The whole walk-through, top to bottom: 51.0, 98.0 and 141.0 tokens charged, a limit of
        1500.0 with 290.0 used, 402 on a 1-token chat, and 404 chat_deleted after the delete."""
        _start, steps = walkthrough()
        assert len(steps) >= 12
        state = tmp_path / "state.sh"
        state.write_text("")
        shown = 0
        for step in steps:
            output, statuses = run_step(step, {DEFAULT_BASE_URL: readme_service.url}, state)
            if "curl" in step.command:
                assert set(statuses) == {step.expected_status}, (step.command, statuses, output)
            if step.answer:
                shown += 1
                assert step.pattern().fullmatch(output), (step.command, step.answer, output)
        assert shown >= 11
        text = README.read_text()
        for figure in ('"tokens_charged":51.0', '"tokens_charged":98.0', '"tokens_charged":141.0',
                       '"token_limit":1500.0,"token_used":290.0', '"code":"chat_deleted"'):  # fmt: skip
            assert figure in section(text, "Walk-through"), figure


class TestQuickStart:
    """The Quick start is the whole setup: the system packages the tests need, and the two commands."""

    def test_system_packages_and_commands(self) -> None:
        """It installs what .ci/run installs, and .ci/run runs exactly its test command."""
        quick = section(README.read_text(), "Quick start")
        blocks = shell_blocks(quick)
        install = next(block for block in blocks if "apt-get install" in block)
        packages = set(install.split("apt-get install", 1)[1].split())
        ci = (ROOT / ".ci" / "run").read_text()
        assert packages == set(re.findall(r"missing\+=\((\S+)\)", ci)) - {"make"}
        assert {"redis-server", "redis-tools", "haproxy", "chromium"} <= packages
        commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
        assert {"make run", "make test"} <= set(commands)
        assert ci.strip().splitlines()[-1] == "make test"

    def test_length(self) -> None:
        """About 200 lines: what it is, how to start, the walk-through and links, no more."""
        assert len(README.read_text().splitlines()) <= 250
