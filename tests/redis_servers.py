"""Real `redis-server` processes for the tests, each on a free port of 127.0.0.1 (style.md 16).

A server never persists anything (`--save "" --appendonly no`) and keeps its working files in its own
temporary directory. It can be stopped and started again on the same port, so later tests can simulate a
Redis restart under a running client. `LocalRedisCluster` joins three such servers, started with
`--cluster-enabled yes`, into a Redis Cluster of three primaries. The Redis that may already listen on
6379 is never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis
from redis.asyncio import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from ledger import RedisClient

REDIS_SERVER_BINARY = Path("/usr/bin/redis-server")
REDIS_CLI_BINARY = Path("/usr/bin/redis-cli")
# Another Redis may serve this machine on the default port: the tests never use it.
RESERVED_PORT = 6379
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


async def flush_all(client: RedisClient) -> None:
    """FLUSHALL on every node: a cluster client sends it to every primary (asked for explicitly here,
    so an empty database means the whole cluster is empty)."""
    if isinstance(client, RedisCluster):
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.flushall()


async def count_keys(client: RedisClient) -> int:
    """DBSIZE of the whole store: on a cluster, the sum over every primary (plain DBSIZE asks one node)."""
    if isinstance(client, RedisCluster):
        # redis-py sums the nodes' answers for a multi-node DBSIZE.
        total: int = await client.execute_command("DBSIZE", target_nodes=RedisCluster.PRIMARIES)
        return total
    return int(await client.dbsize())


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


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets are held together, so the kernel cannot repeat one."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] == RESERVED_PORT:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class RedisServer:
    """One `redis-server` process. `start()` and `stop()` may alternate; the port stays the same, so a
    client built from `url` reconnects after a restart. Use as a context manager to also remove the
    working directory."""

    def __init__(
        self, *, binary: Path = REDIS_SERVER_BINARY, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
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
        self.extra_args = list(extra_args)
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
            *self.extra_args,
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


class LocalRedisCluster:
    """A Redis Cluster of three primaries (no replicas) on free ports, for the cluster backend.

    Each node is a RedisServer started with `--cluster-enabled yes`; `redis-cli --cluster create` then
    spreads the 16384 slots over them, and `start()` returns once every node reports cluster_state:ok,
    so the first test does not meet CLUSTERDOWN. Use as a context manager."""

    def __init__(self, *, nodes: int = 3) -> None:
        if not REDIS_CLI_BINARY.is_file():
            raise RedisServerError(f"{REDIS_CLI_BINARY} not found: `apt-get install redis-tools`.")
        # Each node needs a client port and a cluster bus port, all distinct.
        ports = free_ports(2 * nodes)
        self.servers = [
            RedisServer(port=port, extra_args=_cluster_args(bus_port))
            for port, bus_port in zip(ports[::2], ports[1::2], strict=True)
        ]

    @property
    def url(self) -> str:
        """Any node's URL is enough for a cluster client: it discovers the others."""
        return f"redis://127.0.0.1:{self.servers[0].port}"

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def start(self) -> None:
        for server in self.servers:
            server.start()
        create_cluster(self.ports, replicas=0)
        self._wait_until_ok()

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> LocalRedisCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            states = [self._cluster_state(server) for server in self.servers]
            if all(state == "ok" for state in states):
                return
            time.sleep(0.05)
        raise RedisServerError(f"the cluster on {self.ports} did not reach cluster_state:ok: {states}")

    @staticmethod
    def _cluster_state(server: RedisServer) -> str:
        with server._client() as client:
            # redis-py parses the CLUSTER INFO text into a dict of str.
            info: dict[str, str] = client.cluster("INFO")
        return info.get("cluster_state", "unknown")


def _cluster_args(bus_port: int) -> list[str]:
    # The node's cluster state file lives in its own working directory (--dir), so the name is fixed.
    # The bus port is given: by default it is the client port + 10000, which may be taken or past 65535.
    return [
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-port", str(bus_port),
        "--cluster-node-timeout", "5000",
    ]  # fmt: skip


def create_cluster(ports: list[int], *, replicas: int) -> None:
    """`redis-cli --cluster create` over the servers on `ports` of 127.0.0.1, `replicas` per primary."""
    addresses = [f"127.0.0.1:{port}" for port in ports]
    create = [str(REDIS_CLI_BINARY), "--cluster", "create", *addresses, "--cluster-replicas", str(replicas)]
    result = subprocess.run(
        [*create, "--cluster-yes"], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RedisServerError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
