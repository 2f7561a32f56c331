"""Redis clients: a real server from a URL, a Redis Cluster from a URL, a primary found through Redis
Sentinel, or the embedded in-process one.

The embedded Redis is fakeredis with Lua (lupa): the same scripts run on it, in one process, and its data
is gone when the process exits. It exists so a newcomer needs no Redis server (design.md section 9).

A cluster client runs the same scripts because every chat script touches one slot (ledger/keys.py).
MOVED and ASK redirections, topology refreshes after a failover, and loading a script on a node that lacks
it (NOSCRIPT) are redis-py's job; nothing here retries by hand.

A Sentinel client asks the sentinels where the primary is at every new connection (redis-py's
SentinelConnectionPool for the pool, a locator for the multiplexer), so after a failover the first
call that fails on the old primary is followed by calls to the new one. With a Durability, every write
waits for a replica's acknowledgement (ledger/durable.py).
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import unquote

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, PipelineCommand
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import AskError, MovedError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger.durable import CLUSTER_MARKER_TTL_MS, Durability, GroupCommit, cluster_marker, is_write
from ledger.multiplex import Multiplexer

# What every ledger class accepts: one node (or the embedded fakeredis), or a Redis Cluster. Every chat
# script touches one slot (ledger/keys.py), so both run the same scripts.
RedisClient: TypeAlias = Redis | RedisCluster

# How long a command waits for a free pooled connection before it fails (and the API answers 503). A
# burst above the pool size then queues briefly instead of failing at once.
POOL_WAIT_S = 5.0


# How long a sentinel has to answer where the primary is, before the next sentinel is asked.
SENTINEL_TIMEOUT_S = 1.0


class DurablePipeline(Pipeline):
    """A pipeline that, when it holds a write and `durability` is set, ends with WAIT and raises
    ReplicaTimeout when no replica acknowledged it in time (ledger/durable.py). Not for transactions:
    the ledger sends none."""

    durability: Durability | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        durability = self.durability
        if durability is None or not any(is_write(args) for args, _options in self.command_stack):
            return await super().execute(raise_on_error)
        for command in durability.commands():
            self.execute_command(*command)
        *replies, _marker, acknowledged = await super().execute(raise_on_error)
        durability.check(acknowledged)
        return replies


class PipelinedRedis(Redis):
    """A client for one node whose ledger scripts share one pipelined connection (ledger/multiplex.py),
    because a pooled connection per script call costs most of a worker's time under load; every other
    command uses the pool. With `durability`, every write waits for a replica: scripts through
    `group_commit`, other commands pipelined with WAIT on their pooled connection. Closing the client
    closes all of them, and the sentinels' connections."""

    multiplexer: Multiplexer | None = None
    group_commit: GroupCommit | None = None
    durability: Durability | None = None
    sentinel_manager: Sentinel | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.durability is None or not is_write(args):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        async with self.pipeline(transaction=False) as pipe:
            pipe.execute_command(*args, **options)
            (reply,) = await pipe.execute()
        return reply

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = DurablePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.durability = self.durability
        return pipe

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.multiplexer is not None:
            await self.multiplexer.aclose()
        if self.group_commit is not None:
            await self.group_commit.aclose()
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, blocking when full as `connect`'s pool does (POOL_WAIT_S)."""


def _durable(client: PipelinedRedis, durability: Durability | None) -> PipelinedRedis:
    """`client` with every write made durable, when `durability` is set."""
    client.durability = durability
    if durability is not None and client.multiplexer is not None:
        # WAIT may hold the connection up to its timeout: that is no sign the connection is dead.
        twin = client.multiplexer.twin(extra_timeout_s=durability.timeout_ms / 1000)
        client.group_commit = GroupCommit(twin, durability)
    return client


def connect(url: str, *, max_connections: int = 100, durability: Durability | None = None) -> Redis:
    """A pooled client for one Redis node. One per process: never per request.

    The pool blocks (up to POOL_WAIT_S) when all its connections are busy: redis-py's default pool raises
    "Too many connections" at once, which would turn a short burst into 503s. The ledger's scripts do
    not take pooled connections: they share the client's multiplexer, when the URL allows one."""
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        health_check_interval=30,
    )
    # As Redis.from_pool does: the client owns the pool and closes it.
    client = PipelinedRedis(connection_pool=pool)
    client.auto_close_connection_pool = True
    # The URL, not the pool, says where the multiplexer connects (the pool's options are redis-py's
    # internals); it decodes replies as the pool's decode_responses=True does.
    client.multiplexer = Multiplexer.for_url(url, encoding="utf-8")
    return _durable(client, durability)


class SentinelTarget:
    """What REDIS_SENTINEL_URL names: `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`.
    The password is the data nodes' (the sentinels are asked without one)."""

    def __init__(self, url: str) -> None:
        scheme, separator, rest = url.partition("://")
        if scheme != "redis+sentinel" or not separator or any(c.isspace() for c in url):
            raise ValueError("a redis+sentinel:// URL")
        credentials, _, rest = rest.rpartition("@")
        hosts, _, path = rest.partition("/")
        self.username, _, password = credentials.partition(":") if credentials else ("", "", "")
        self.password = unquote(password) or None
        self.sentinels = [_host_port(item) for item in hosts.split(",")]
        service, _, database = path.partition("/")
        if not service or not (database == "" or database.isdigit()):
            raise ValueError("a service name, then an optional database number")
        self.service = unquote(service)
        self.db = int(database or 0)


def _host_port(item: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"host:port, not {item!r}")
    return host.strip("[]"), int(port)


def connect_sentinel(url: str, *, max_connections: int = 100, durability: Durability | None = None) -> Redis:
    """A pooled client for the primary that the sentinels of `url` name (SentinelTarget), following
    it through failovers: its pool and its multiplexer ask the sentinels at every new connection."""
    target = SentinelTarget(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        target.sentinels,
        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S},
    )
    client = sentinel.master_for(
        target.service,
        redis_class=PipelinedRedis,
        connection_pool_class=_BlockingSentinelPool,
        decode_responses=True,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        health_check_interval=30,
        db=target.db,
        username=unquote(target.username) or None,
        password=target.password,
    )
    assert isinstance(client, PipelinedRedis)
    client.sentinel_manager = sentinel

    async def locate() -> tuple[str, int]:
        host, port = await sentinel.discover_master(target.service)
        return str(host), int(port)

    client.multiplexer = Multiplexer(
        "", 0, locate=locate, db=target.db, username=unquote(target.username) or None,
        password=target.password, encoding="utf-8",
    )  # fmt: skip
    return _durable(client, durability)


def multiplexer_of(client: RedisClient) -> Multiplexer | None:
    """The client's multiplexer, if it has one (a `connect` client of a plain TCP node, a Sentinel
    client)."""
    return client.multiplexer if isinstance(client, PipelinedRedis) else None


def durability_of(client: RedisClient) -> Durability | None:
    """The durability `connect`, `connect_sentinel` or `connect_cluster` gave the client, if any."""
    if isinstance(client, PipelinedRedis | OnceCluster):
        return client.durability
    return None


def group_commit_of(client: RedisClient) -> GroupCommit | None:
    """Where the client's durable script calls go, if it has a durability and a multiplexer."""
    return client.group_commit if isinstance(client, PipelinedRedis) else None


# How many times a write that was redirected (MOVED: it did not run) is sent again, to the slot's new node.
_REDIRECTS_MAX = 3


class OnceCluster(RedisCluster):
    """A cluster client that sends every write once. redis-py's cluster client sends a command again
    after a connection error, which during a failover re-runs a script whose first run may have
    happened (a second top-up, a second charge); here a write whose reply was lost raises, and only a
    MOVED or ASK reply, which says it did not run, is followed by a refresh and another send.

    With `durability`, each write is pipelined with WAIT on the connection of its slot's node: per node,
    as WAIT only counts that node's replicas. A pipeline holding a write sends its commands one by one
    that way (the ledger pipelines few writes on a cluster: a new chat's two index entries)."""

    durability: Durability | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if "target_nodes" in kwargs or not is_write(args):
            return await super().execute_command(*args, **kwargs)
        asked: ClusterNode | None = None
        for _attempt in range(_REDIRECTS_MAX):
            if self._initialize:
                _ = await self.initialize()
            node = asked or self.nodes_manager.get_node_from_slot(await self._determine_slot(*args))
            reply = await self._send_once(node, args, kwargs, asking=asked is not None)
            if isinstance(reply, MovedError):
                # As redis-py does: the slot's new home patches the slot map.
                asked = None
                await self.nodes_manager.move_slot(reply)
            elif isinstance(reply, AskError):
                # The slot is migrating and the keys left: ask the target, once, behind ASKING.
                asked = self.get_node(host=reply.host, port=reply.port)
                self._initialize = asked is None
            else:
                return reply
        raise RedisClusterException(f"{args[0]} was redirected {_REDIRECTS_MAX} times.")

    async def _send_once(
        self, node: ClusterNode, args: tuple[Any, ...], kwargs: dict[str, Any], *, asking: bool
    ) -> Any:
        """The write's reply (a redirection is returned, to be followed), WAIT checked if durable."""
        commands = [PipelineCommand(0, "ASKING")] if asking else []
        commands.append(PipelineCommand(len(commands), *args, **kwargs))
        if self.durability is not None:
            marker = cluster_marker(str(await self._first_key(args)))
            commands.append(PipelineCommand(len(commands), "SET", marker, "", "PX", CLUSTER_MARKER_TTL_MS))
            commands.append(PipelineCommand(len(commands), *self.durability.command()))
        try:
            await node.execute_pipeline(commands)
        except (RedisConnectionError, RedisTimeoutError):
            # As redis-py does before its retry, which is what is left out: the next command
            # rediscovers the cluster, in case this node was replaced.
            node.update_active_connections_for_reconnect()
            await node.disconnect_free_connections()
            self.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
            self._initialize = True
            raise
        replies = [command.result for command in commands[int(asking) :]]
        # MovedError is an AskError: either says the write did not run.
        if isinstance(replies[0], AskError):
            return replies[0]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if self.durability is not None:
            self.durability.check(replies[2])
        return replies[0]

    async def _first_key(self, args: tuple[Any, ...]) -> Any:
        """The write's first key, which names its slot (EVALSHA's keys follow the key count)."""
        if str(args[0]).upper() in ("EVAL", "EVALSHA", "FCALL"):
            return args[3]
        keys = await self.commands_parser.get_keys(*args)
        if not keys:
            raise RedisClusterException(f"{args[0]} names no key to find its node by.")
        return keys[0]

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        return _OnceClusterPipeline(self, transaction)  # type: ignore[abstract]


class _OnceClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose writes, when it has any, go one by one through OnceCluster."""

    def __init__(self, client: OnceCluster, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)
        self.queued: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.once = client

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self.queued.append((args, kwargs))
        return super().execute_command(*args, **kwargs)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        queued, self.queued = self.queued, []
        if not any(is_write(args) for args, _kwargs in queued):
            return await super().execute(raise_on_error, allow_redirections)
        await self.reset()  # type: ignore[no-untyped-call]
        return [await self.once.execute_command(*args, **kwargs) for args, kwargs in queued]


def connect_cluster(
    url: str, *, max_connections: int = 100, durability: Durability | None = None
) -> RedisCluster:
    """A client for a Redis Cluster, given any one node's URL (the rest are discovered), that sends
    each write once (OnceCluster).

    `max_connections` is per node. redis-py's cluster client has no blocking pool: a worker must not run
    more concurrent commands against one node than this, which the load balancer's per-worker connection
    limit ensures (deploy/haproxy.cfg)."""
    client = OnceCluster.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        health_check_interval=30,
    )
    assert isinstance(client, OnceCluster)
    client.durability = durability
    return client


def embedded_redis() -> Redis:
    """An in-process Redis with Lua scripting, for the embedded default and the fast tests."""
    client: Redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    return client


def is_cluster(client: RedisClient) -> bool:
    """A Redis Cluster client: its pipelines refuse scripts and send each node's commands concurrently,
    so work that must be ordered across slots needs separate round trips there."""
    return isinstance(client, RedisCluster)
