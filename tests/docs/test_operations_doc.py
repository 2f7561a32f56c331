"""docs/operations.md's command-line session runs as written, from the path it gives
(`.venv/bin/chatledger`), on a real redis-server in place of the one it names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.docs.walkthrough import ROOT, parse_block, run_step, section, shell_blocks
from tests.redis_servers import RedisServer

OPERATIONS = ROOT / "docs" / "operations.md"
DOCUMENTED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.redis
@pytest.mark.slow
class TestCommandLine:
    """Each command of the session exits 0 and prints what the document shows."""

    def test_session_runs_as_written(self, redis_server: RedisServer, tmp_path: Path) -> None:
        """config create (its id kept), key create, key list (two keys), config update (the rate limit
        and weight it sets) and config list, through `.venv/bin/chatledger`."""
        session = shell_blocks(section(OPERATIONS.read_text(), "The command line"))[0]
        steps = parse_block(session)
        assert [s.command.split()[0] for s in steps][:2] == ["export", "export"]
        assert all(".venv/bin/chatledger" in s.command for s in steps[1:])
        # The documented path, in this test run's venv (a clone's .venv when run by `make test`), and
        # the test's Redis, never the one on 6379 that the document names.
        replacements = {".venv/bin/": f"{Path(sys.prefix)}/bin/", DOCUMENTED_REDIS: redis_server.url}
        state = tmp_path / "state.sh"
        state.write_text("")
        for step in steps:
            output, _statuses = run_step(step, replacements, state, cwd=tmp_path)
            if step.answer:
                assert step.pattern().fullmatch(output), (step.command, step.answer, output)
        assert "CONFIG_ID" in state.read_text()
