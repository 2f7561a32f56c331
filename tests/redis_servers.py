"""Real `redis-server` processes for the tests, each on a free port of 127.0.0.1 (style.md 16).

A server never persists anything (`--save "" --appendonly no`) and keeps its working files in its own
temporary directory. It can be stopped and started again on the same port, so later tests can simulate a
Redis restart under a running client. The Redis that may already listen on 6379 is never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER_BINARY = Path("/usr/bin/redis-server")
# Another Redis may serve this machine on the default port: the tests never use it.
RESERVED_PORT = 6379
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class RedisServerError(RuntimeError):
    """A test Redis could not be found, started or stopped."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listened on a moment ago (the kernel's pick for port 0)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != RESERVED_PORT:
            return port


class RedisServer:
    """One `redis-server` process. `start()` and `stop()` may alternate; the port stays the same, so a
    client built from `url` reconnects after a restart. Use as a context manager to also remove the
    working directory."""

    def __init__(self, *, binary: Path = REDIS_SERVER_BINARY, port: int | None = None) -> None:
        if not binary.is_file():
            raise RedisServerError(
                f"{binary} not found: the tests need a real Redis server. "
                "Install it with `apt-get install redis-server`."
            )
        self.binary = binary
        self.port = port if port is not None else free_port()
        if self.port == RESERVED_PORT:
            raise RedisServerError(f"port {RESERVED_PORT} belongs to the machine's own Redis")
        self.directory = Path(tempfile.mkdtemp(prefix="chatledger-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Spawn the server and return once it answers PING."""
        if self.running:
            raise RedisServerError(f"the Redis on port {self.port} is running already")
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_until_ready()

    def stop(self) -> None:
        """SHUTDOWN NOSAVE, or terminate (then kill) a server that does not obey; idempotent."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            try:
                with self._client() as client:
                    client.shutdown(nosave=True)
            except redis.RedisError:
                pass  # the connection drops as the server exits: that is the expected way out
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _client(self) -> redis.Redis:
        # No retries: redis-py's default backoff would sleep for seconds on the refused connections that
        # are expected while the server starts and as it shuts down.
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RedisServerError(
                    f"redis-server on port {self.port} exited with {self._process.returncode}: "
                    f"{self._log_tail()}"
                )
            try:
                with self._client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server on port {self.port} did not answer PING: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
