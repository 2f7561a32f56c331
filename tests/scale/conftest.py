"""Real processes for the scale-out tests: `chatledger serve --workers N`, and deploy/run-local.sh (workers
behind HAProxy), on free ports of 127.0.0.1, against the Redis the session fixtures spawned.

Each process writes its log to a file of the test's temporary directory; the tests wait for the events
they need in that file (bounded), never for a fixed time. Every process started here is stopped by its
fixture: SIGTERM first (the graceful path under test), then SIGKILL of its process group if it hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_LOCAL = ROOT / "deploy" / "run-local.sh"
# Generous bounds for starting and stopping on a loaded 2-core CI machine; they only end a hung test.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


def base_env(**settings: str) -> dict[str, str]:
    """This environment without any chatledger or Redis setting, plus `settings`: JSON logs, and no
    demo key or Redis URL leaking in from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHATLEDGER_")
        and k not in ("REDIS_URL", "REDIS_CLUSTER_URL", "REDIS_SENTINEL_URL")
    }
    env["CHATLEDGER_LOG_FORMAT"] = "json"
    env.update(settings)
    return env


class LogFile:
    """JSON log lines of a process, read as they are written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found

    def wait_for(self, name: str, count: int = 1, *, process: subprocess.Popen[bytes] | None = None) -> None:
        """Return once `count` events called `name` were logged; fail if the process exits first."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.events(name)) < count:
            if process is not None and process.poll() is not None:
                pytest.fail(f"exited with {process.returncode} before {count} {name}: {self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {count} {name} events in {START_TIMEOUT_S} s: {self.tail()}")
            time.sleep(0.02)

    def tail(self) -> str:
        return self.path.read_text(errors="replace")[-3000:] if self.path.exists() else "(no log)"


class Process:
    """A started process in its own process group, with its log file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log = LogFile(log_path)
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=ROOT,
            )  # fmt: skip

    def terminate(self) -> int:
        """SIGTERM, then the exit status (the process group is killed if it does not stop in time)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        """The exit status, once the process exits on its own (or is killed if it does not in time)."""
        try:
            return self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not stop within {STOP_TIMEOUT_S} s: {self.log.tail()}")

    def kill(self) -> None:
        """SIGKILL the process group (the process and every worker it started), if still there."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.terminate()
        # Workers left behind by a failed test share the group: they go too.
        self.kill()


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Any]:
    """Start `chatledger serve --workers N` (N >= 2) and wait until every worker listens."""
    started: list[Process] = []

    def start(port: int, workers: int, **settings: str) -> Process:
        command = [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", str(workers)]
        process = Process(command, base_env(**settings), tmp_path / f"serve-{len(started)}.log")
        started.append(process)
        process.log.wait_for("workers_ready", process=process.popen)
        return process

    yield start
    for process in started:
        process.close()


class LocalDeployment:
    """deploy/run-local.sh running: HAProxy on `port`, in front of the workers."""

    def __init__(self, process: Process, port: int, run_dir: Path) -> None:
        self.process = process
        self.port = port
        self.run_dir = run_dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def run_local(tmp_path: Path) -> Iterator[Any]:
    """Start deploy/run-local.sh and wait for its `ready:` line."""
    if shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None:
        pytest.fail("haproxy is not installed: apt-get install haproxy (.ci/run installs it)")
    started: list[Process] = []

    def start(port: int, worker_ports: list[int], **settings: str) -> LocalDeployment:
        run_dir = tmp_path / f"run-local-{len(started)}"
        command = [
            "bash", str(RUN_LOCAL), "--port", str(port),
            "--worker-ports", ",".join(map(str, worker_ports)), "--run-dir", str(run_dir),
        ]  # fmt: skip
        env = base_env(CHATLEDGER=f"{sys.executable} -m service", **settings)
        process = Process(command, env, tmp_path / f"run-local-{len(started)}.out")
        started.append(process)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready: " not in process.log.tail():
            if process.popen.poll() is not None or time.monotonic() > deadline:
                process.close()
                logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(run_dir.glob("*.log")))
                pytest.fail(f"run-local.sh did not start: {process.log.tail()}\n{logs}")
            time.sleep(0.05)
        return LocalDeployment(process, port, run_dir)

    yield start
    for process in started:
        process.close()
