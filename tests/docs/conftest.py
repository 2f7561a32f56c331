"""A `chatledger serve` started the way the README says (`make run` with the README's variables), on a
free port, for the tests that follow the README and drive the API as a newcomer would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.walkthrough import ROOT, start_environment, walkthrough

START_TIMEOUT_S = 60
ADMIN_TOKEN = "docs-admin-token"


@dataclass(frozen=True)
class Started:
    url: str
    env: dict[str, str]
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make run exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"make run did not answer within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def readme_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """The README's start command, run through make on this test run's venv (which is up to date, so
    make only starts the service), on a free port and with the admin API on for the client test."""
    start, _steps = walkthrough()
    venv = Path(sys.prefix)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLEDGER_", "REDIS_"))}
    env.update(start_environment(start), CHATLEDGER_PORT=str(port), CHATLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    log = tmp_path_factory.mktemp("readme") / "make-run.log"
    command = ["make", "-s", f"VENV={venv}", "-o", f"{venv}/bin/chatledger", "run"]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, process, log)
        yield Started(url=url, env=env, log=log)
    finally:
        # make and the server it started share the new session's process group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
