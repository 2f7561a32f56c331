"""Real Redis topologies that fail over, for tests/failover: a primary, replicas and Redis Sentinel.

Each replica replicates through a `LinkProxy`, a small TCP proxy in the replication link that can stop
forwarding what the primary sends, as a network partition would (/work/shared/notes: a replica on
loopback keeps up with its primary, so without a cut the test could not tell a durable ledger from one
that is not). Everything runs on free ports of 127.0.0.1 and is stopped by `close()`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import redis

from tests.redis_servers import (
    REDIS_SERVER_BINARY,
    RedisServer,
    RedisServerError,
    create_cluster,
    free_port,
    free_ports,
)

SERVICE = "chatledger"
# Sentinels call a primary down after this long without an answer; small, so a test's failover is quick.
DOWN_AFTER_MS = 1000
START_TIMEOUT_S = 20.0


class LinkProxy:
    """Forwards one port to another on its own thread and event loop. `cut()` holds back what the
    upstream (the primary) sends, so the replica behind it falls behind while staying connected, as
    behind a partition; `heal()` delivers what was held back, and forwarding goes on."""

    def __init__(self, upstream_port: int, *, replication_only: bool = False) -> None:
        self.upstream_port = upstream_port
        # Clients go through too (a cluster node announcing this port): only the connections that
        # asked for the replication stream (PSYNC) are cut.
        self.replication_only = replication_only
        self.port = free_port()
        self.cut_off = False
        self.losing: bytes | None = None
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RedisServerError("the link proxy did not start")

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "cut_off", True)

    def lose_reply_to(self, word: bytes) -> None:
        """The next client command holding `word` reaches the node, and its reply is lost with the
        connection: the node ran it, the client cannot know."""
        self._loop.call_soon_threadsafe(setattr, self, "losing", word)

    def heal(self) -> None:
        done = threading.Event()

        def deliver() -> None:
            self.cut_off = False
            for writer, data in self._held:
                if not writer.is_closing():
                    writer.write(data)
            self._held.clear()
            done.set()

        self._loop.call_soon_threadsafe(deliver)
        done.wait(5)

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            self._thread.join(5)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # Aborted transports end every pipe, and with them every connection's task, on their own.
        for writer in self._writers:
            writer.transport.abort()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await asyncio.wait(tasks, timeout=5) if tasks else None
        self._loop.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        # [replicating, this connection's next reply is to be lost]
        state = [not self.replication_only, False]
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, downstream=False, state=state),
                self._pipe(up_reader, writer, downstream=True, state=state),
            )
        finally:
            writer.close()
            up_writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        downstream: bool,
        state: list[bool],
    ) -> None:
        try:
            while data := await reader.read(65536):
                if not downstream and b"SYNC" in data:
                    state[0] = True
                if not downstream and self.losing is not None and self.losing in data:
                    self.losing, state[1] = None, True
                if downstream and state[1]:
                    writer.transport.abort()  # the reply goes nowhere, and the connection with it
                    return
                if downstream and self.cut_off and state[0]:
                    self._held.append((writer, data))  # the partition: held until healed, if ever
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            await asyncio.sleep(0)  # lets the transport finish closing before the loop may stop


class SentinelProcess:
    """`redis-server <conf> --sentinel` watching the primary as SERVICE, quorum 2."""

    def __init__(self, primary_port: int) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="chatledger-sentinel-"))
        conf = self.directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            # Long: after this long, a sentinel points a replica that replicates from another address
            # (the proxy) at the primary itself, which would bypass the cut.
            f"sentinel failover-timeout {SERVICE} 120000\n"
            f"sentinel parallel-syncs {SERVICE} 2\n"
        )
        self._process = subprocess.Popen(
            [str(REDIS_SERVER_BINARY), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def primary(self) -> tuple[str, int] | None:
        try:
            with redis.Redis(port=self.port, socket_timeout=1, decode_responses=True) as client:
                reply = client.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
        except redis.RedisError:
            return None
        return (str(reply[0]), int(reply[1])) if reply else None

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()


class _Topology:
    """A set of processes a test starts whole or not at all: a failed start stops what it started."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SentinelTopology(_Topology):
    """One primary, `replicas` replicas (each behind its LinkProxy), three sentinels."""

    def __init__(self, *, replicas: int = 2, primary_args: tuple[str, ...] = ()) -> None:
        self.primary = RedisServer(extra_args=["--repl-diskless-sync", "no", *primary_args])
        self.replicas: list[RedisServer] = []
        self.proxies: list[LinkProxy] = []
        self.sentinels: list[SentinelProcess] = []
        self._replica_count = replicas

    @property
    def url(self) -> str:
        """REDIS_SENTINEL_URL of this topology."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.primary.start()
        for _ in range(self._replica_count):
            proxy = LinkProxy(self.primary.port)
            self.proxies.append(proxy)
            replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(proxy.port)])
            self.replicas.append(replica)
            replica.start()
        self._wait_synced()
        self.sentinels = [SentinelProcess(self.primary.port) for _ in range(3)]
        self._wait(lambda: all(s.primary() == ("127.0.0.1", self.primary.port) for s in self.sentinels))
        # Each sentinel must know the replicas before the primary dies, or it has nothing to promote.
        self._wait(self._sentinels_see_replicas)

    def wait_replicated(self) -> None:
        """Return once every replica has everything the primary wrote (its link must not be cut)."""

        def caught_up() -> bool:
            offset = _info(self.primary.port).get("master_repl_offset")
            return all(_info(r.port).get("slave_repl_offset") == offset for r in self.replicas)

        self._wait(caught_up)

    def kill_primary(self) -> int:
        """SIGKILL the primary (no shutdown, nothing flushed); returns the port it had."""
        process = self.primary._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.primary._process = None
        return self.primary.port

    def wait_promoted(self, old_port: int) -> tuple[str, int]:
        """The new primary, once a majority of the sentinels names one other than `old_port` and it
        answers as a primary."""

        def promoted() -> bool:
            answers = [s.primary() for s in self.sentinels]
            new = [a for a in answers if a is not None and a[1] != old_port]
            return len(new) >= 2 and _role(new[0][1]) == "master"

        self._wait(promoted, timeout_s=30.0)
        return next(a for a in (s.primary() for s in self.sentinels) if a and a[1] != old_port)

    def fail_over(self) -> None:
        """SENTINEL FAILOVER, asked again while the sentinel has no replica it trusts yet (NOGOODSLAVE:
        just started, it has not heard from them)."""

        def accepted() -> bool:
            with redis.Redis(port=self.sentinels[0].port, decode_responses=True) as sentinel:
                try:
                    sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
                except redis.ResponseError as exc:
                    if "NOGOODSLAVE" not in str(exc):
                        raise
                    return False
            return True

        self._wait(accepted)

    def wait_role(self, port: int, role: str) -> None:
        """Return once the node on `port` says it is a `role` (`master` or `slave`)."""
        self._wait(lambda: _role(port) == role, timeout_s=30.0)

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        for proxy in self.proxies:
            proxy.close()
        for server in [self.primary, *self.replicas]:
            if server._process is not None and server._process.poll() is None:
                server._process.kill()
                server._process.wait()
            server._process = None
            server.close()

    def _wait_synced(self) -> None:
        self._wait(lambda: all(_info(r.port).get("master_link_status") == "up" for r in self.replicas))

    def _sentinels_see_replicas(self) -> bool:
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=1, decode_responses=True) as client:
                if len(client.execute_command("SENTINEL", "replicas", SERVICE)) < self._replica_count:
                    return False
        return True

    @staticmethod
    def _wait(condition: object, timeout_s: float = START_TIMEOUT_S) -> None:
        assert callable(condition)
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RedisServerError(f"the sentinel topology did not reach {condition!r} in {timeout_s} s")
            time.sleep(0.05)


def _info(port: int) -> dict[str, str]:
    try:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            info: dict[str, str] = client.info("replication")
            return info
    except redis.RedisError:
        return {}


def _role(port: int) -> str | None:
    return _info(port).get("role")


class ReplicatedCluster(_Topology):
    """A Redis Cluster of three primaries with one replica each, whose nodes call a silent peer failed
    after NODE_TIMEOUT_MS, so a killed primary's replica takes over within seconds."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self) -> None:
        ports = free_ports(12)
        # Every node announces its proxy's port, so clients and replicas alike reach it through a
        # LinkProxy that can cut the replication streams it carries.
        self.proxies = [LinkProxy(port, replication_only=True) for port in ports[::2]]
        self.servers = [
            RedisServer(
                port=port,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    str(bus),
                    "--cluster-node-timeout",
                    str(self.NODE_TIMEOUT_MS),
                    "--cluster-announce-port",
                    str(proxy.port),
                    "--cluster-announce-bus-port",
                    str(bus),
                    "--repl-diskless-sync",
                    "no",
                ],
            )
            for port, bus, proxy in zip(ports[::2], ports[1::2], self.proxies, strict=True)
        ]
        # The node behind each announced (proxy) port.
        self.behind = {proxy.port: server for proxy, server in zip(self.proxies, self.servers, strict=True)}
        self._replicas_at_start: dict[int, list[int]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.proxies[0].port}"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        create_cluster([server.port for server in self.servers], replicas=1)
        SentinelTopology._wait(self._ready, timeout_s=30.0)
        self.remember_replicas()

    def primary_of(self, announced_port: int) -> RedisServer:
        """The node a client reaches at `announced_port` (its proxy's)."""
        return self.behind[announced_port]

    def proxy_of(self, server: RedisServer) -> LinkProxy:
        return self.proxies[self.servers.index(server)]

    def cut(self, primary: RedisServer) -> None:
        """Cut `primary`'s replication stream to its replica (clients still reach it)."""
        self.proxies[self.servers.index(primary)].cut()

    def kill(self, server: RedisServer) -> None:
        process = server._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        server._process = None

    def wait_promoted(self, old_port: int) -> int:
        """The port of the replica that took over from `old_port`, once the cluster is ok again."""

        def promoted() -> bool:
            return self._state_ok() and any(
                _info(s.port).get("role") == "master" and self._was_replica_of(s, old_port)
                for s in self.live()
            )

        SentinelTopology._wait(promoted, timeout_s=30.0)
        return next(s.port for s in self.live() if self._was_replica_of(s, old_port))

    def rejoin(self, server: RedisServer) -> None:
        """Start a killed node again: empty (no persistence) but knowing the cluster (nodes.conf), it
        comes back as a replica of the node that took its slots; return once it has synced."""
        server.start()
        SentinelTopology._wait(
            lambda: _info(server.port).get("master_link_status") == "up" and self._state_ok(), timeout_s=30.0
        )

    def live(self) -> list[RedisServer]:
        return [server for server in self.servers if server.running]

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for proxy in self.proxies:
            proxy.close()

    def _ready(self) -> bool:
        replicas = [s for s in self.servers if _info(s.port).get("role") == "slave"]
        synced = all(_info(s.port).get("master_link_status") == "up" for s in replicas)
        return self._state_ok() and len(replicas) == 3 and synced

    def _state_ok(self) -> bool:
        for server in self.live():
            with redis.Redis(port=server.port, socket_timeout=1, decode_responses=True) as client:
                try:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return False
                except redis.RedisError:
                    return False
        return True

    def _was_replica_of(self, server: RedisServer, old_port: int) -> bool:
        """Whether `server` replicated `old_port` (its master_port, kept after a promotion in the
        nodes' view as the old primary's slots, so asked of CLUSTER NODES)."""
        return server.port in self._replicas_at_start.get(old_port, [])

    def remember_replicas(self) -> None:
        """Who replicates whom, before anything is killed."""
        found: dict[int, list[int]] = {}
        for server in self.servers:
            info = _info(server.port)
            if info.get("role") == "slave":
                primary = self.behind[int(info["master_port"])]
                found.setdefault(primary.port, []).append(server.port)
        self._replicas_at_start = found
