"""The processes a benchmark run starts, and their certain end.

Each child runs in its own process group with its output in a log file of the run's directory. `Children`
stops them all when the run ends, however it ends (an exception, Ctrl-C, SIGTERM): SIGTERM to the group
first, SIGKILL after a bound. The Redis server comes from tests/redis_servers.py (free port, nothing on
disk, never the machine's own Redis on 6379).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
# Bounds on a child's start and stop; they only end a hung run.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class BenchError(RuntimeError):
    """A step of the run could not be done (a server did not start, a tool is missing)."""


class Child:
    """One started process, in its own process group, writing to its log file."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                list(command),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=ROOT,
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the group (graceful), then SIGKILL whatever is left of it after STOP_TIMEOUT_S."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        # Workers of a serve parent share its group: they go too, even if the parent already exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


class Children:
    """Every child of a run; closing stops them, newest first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._started: list[Child] = []

    def start(self, name: str, command: Sequence[str], env: dict[str, str]) -> Child:
        child = Child(name, command, env, self.directory / f"{name}-{len(self._started)}.log")
        self._started.append(child)
        return child

    def stop(self, children: Sequence[Child]) -> None:
        for child in reversed(children):
            child.stop()
            self._started.remove(child)

    def close(self) -> None:
        self.stop(list(self._started))

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def service_env(redis_url: str, **settings: str) -> dict[str, str]:
    """This environment without chatledger or Redis settings of the caller's shell, plus `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHATLEDGER_")
        and k not in ("REDIS_URL", "REDIS_CLUSTER_URL", "REDIS_SENTINEL_URL")
    }
    env.update(REDIS_URL=redis_url, CHATLEDGER_LOG_FORMAT="json", **settings)
    return env


def start_service(children: Children, redis_url: str, port: int, workers: int) -> Child:
    """`chatledger serve` with the offline model, at the default log level (one line per request, as
    in production), ready when /healthz answers."""
    command = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    child = children.start(f"chatledger-{workers}w", command, service_env(redis_url))
    wait_ready(f"http://127.0.0.1:{port}/healthz", [child])
    return child


def start_baseline(children: Children, redis_url: str, port: int, workers: int, client: str) -> list[Child]:
    """`workers` bare baseline processes sharing `port` (SO_REUSEPORT), as serve's workers do."""
    command = [sys.executable, "-m", "bench.baseline", "--port", str(port), "--redis-url", redis_url]
    command += ["--client", client]
    started = [children.start(f"bare-{client}", command, service_env(redis_url)) for _ in range(workers)]
    wait_ready(f"http://127.0.0.1:{port}/healthz", started)
    # Each process answers /healthz alone; wait until every one of them listens.
    for child in started:
        wait_log(child, "listening")
    return started


def wait_ready(url: str, children: Sequence[Child]) -> None:
    """Poll `url` until it answers 200; fail if a child exits first or START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive:
                raise BenchError(f"{child.name} exited with {child.popen.returncode}: {child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise BenchError(f"{url} did not answer in {START_TIMEOUT_S} s: {children[0].tail()}")


def wait_log(child: Child, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while text not in child.tail():
        if not child.alive or time.monotonic() > deadline:
            raise BenchError(f"{child.name} never logged {text!r}: {child.tail()}")
        time.sleep(0.05)
