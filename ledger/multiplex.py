"""One pipelined connection per process for the ledger's scripts.

redis-py takes a pooled connection per command, writes it, waits for its reply and gives the connection
back; under load that is most of a worker's time, and Redis pays a read and a write system call per
command. Here every script call of a process shares one connection: the commands issued in one turn of
the event loop leave in one write, and their replies are matched to their callers in order (Redis answers
a connection's commands in the order it sent them). Redis then reads and answers batches, and a call
costs the client little more than packing its command and parsing its reply.

Behaviour is redis-py's where a caller can see it: replies are decoded the same way, error replies raise
the same exception classes with the same messages (`error_for`), a connection failure raises
redis.ConnectionError and the next call connects again, and a reply that takes longer than the
command timeout raises redis.TimeoutError. A timeout resets the connection, failing the calls still
waiting on it: they were all sent on a connection that has not answered for that long.

Only public APIs are used, so any redis-py the project accepts works: hiredis's `Reader` and
`pack_command` speak the protocol, asyncio's protocols own the socket, and the exception classes are
redis-py's public ones. Only plain TCP URLs with options this module knows are multiplexed (`for_url`);
TLS, Unix sockets, RESP3, client names and clusters keep redis-py's own path.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
import redis.exceptions
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ExecAbortError,
    ExternalAuthProviderError,
    MasterDownError,
    ModuleError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

# A command is its words: the name, then keys and arguments (str, bytes or int).
Command = Sequence[str | bytes | int | float]

# The class redis-py raises for an error reply, by the reply's first word; redis-py keeps this table in
# a private parser, so it is repeated here and a test checks it against the installed redis-py.
_ERROR_CLASSES: dict[str, type[RedisError]] = {
    "OOM": OutOfMemoryError,
    "WRONGPASS": AuthenticationError,
    "EXECABORT": ExecAbortError,
    "LOADING": BusyLoadingError,
    "NOSCRIPT": NoScriptError,
    "READONLY": ReadOnlyError,
    "NOAUTH": AuthenticationError,
    "NOPERM": NoPermissionError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "MOVED": MovedError,
    "CLUSTERDOWN": ClusterDownError,
    "CROSSSLOT": ClusterCrossSlotError,
    "MASTERDOWN": MasterDownError,
}
# An ERR reply is named by its whole message, for the few messages redis-py knows.
_ERR_CLASSES: dict[str, type[RedisError]] = {
    # Named from redis-py 8.2 (a ConnectionError); an older one raises the ConnectionError itself.
    "max number of clients reached": getattr(
        redis.exceptions, "MaxClientsReachedError", redis.exceptions.ConnectionError
    ),
    "invalid password": AuthenticationError,
    "wrong number of arguments for 'auth' command": AuthenticationWrongNumberOfArgsError,
    "wrong number of arguments for 'AUTH' command": AuthenticationWrongNumberOfArgsError,
    "AUTH <password> called without any password configured for the default user. Are you sure your "
    "configuration is correct?": AuthenticationError,
    "Client sent AUTH, but no password is set": AuthenticationError,
    "Error loading the extension. Please check the server logs.": ModuleError,
    "Error unloading module: the module exports one or more module-side data types, can't unload": (
        ModuleError
    ),
    "Error unloading module: no such module with that name": ModuleError,
    "Error unloading module: operation not possible.": ModuleError,
    "problem with LDAP service": ExternalAuthProviderError,
    # Named from redis-py 8.1; an older one raises a plain ResponseError, and so does this then.
    "no such fieldset": getattr(redis.exceptions, "NoSuchFieldsetError", ResponseError),
}

# URL query options that change nothing on the wire (they tune redis-py's pool, or are read below);
# any other option means "leave it to redis-py" (a client name, RESP3, keepalive...).
_URL_OPTIONS = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "health_check_interval", "max_connections",
    "timeout",
})  # fmt: skip


class _Batch:
    """Commands written together and the future that gets their replies, in order."""

    __slots__ = ("count", "future", "replies", "sent_s")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, sent_s: float) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []
        self.sent_s = sent_s


class _Connection(asyncio.Protocol):
    """The protocol side: buffers commands until the loop turn ends, parses replies as they come."""

    def __init__(self, encoding: str | None, errors: str, timeout_s: float | None) -> None:
        self._reader = (
            hiredis.Reader(encoding=encoding, errors=errors) if encoding is not None else hiredis.Reader()
        )
        self._timeout_s = timeout_s
        self._pending: collections.deque[_Batch] = collections.deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._failure: redis.exceptions.RedisError | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # Set by a READONLY reply: the node was demoted (a failover), so the next call connects again,
        # to wherever the primary now is, and the calls still waiting here fail as on a lost connection.
        self.demoted = False

    @property
    def usable(self) -> bool:
        return self._failure is None and self._transport is not None and not self.demoted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, but has its methods).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(redis.exceptions.ConnectionError(f"Protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                self._fail(redis.exceptions.ConnectionError("A reply came that no command asked for."))
                return
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY"):
                self.demoted = True
            batch = pending[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.count:
                pending.popleft()
                # A caller that was cancelled meanwhile no longer waits: its replies are dropped.
                if not batch.future.done():
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            redis.exceptions.ConnectionError(f"Connection to Redis lost: {exc or 'closed by server'}.")
        )

    def send(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue `commands` for this turn's write; the future gets their replies."""
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not self._out:
            self._loop.call_soon(self._flush)
        # hiredis's stub types the tuple as one element; it takes any number.
        self._out += [hiredis.pack_command(tuple(command)) for command in commands]  # type: ignore[arg-type]
        self._pending.append(_Batch(future, len(commands), time.monotonic()))
        if self._watchdog is None and self._timeout_s is not None:
            self._watchdog = self._loop.call_later(self._timeout_s, self._check_timeout)
        return future

    def close(self) -> None:
        self._fail(redis.exceptions.ConnectionError("Connection to Redis closed by the client."))

    def _flush(self) -> None:
        if self._transport is None or self._failure is not None or not self._out:
            return
        self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check_timeout(self) -> None:
        """The oldest batch still waiting decides: past the timeout, the connection is given up."""
        self._watchdog = None
        if not self._pending or self._timeout_s is None or self._failure is not None:
            return
        late_s = time.monotonic() - self._pending[0].sent_s - self._timeout_s
        if late_s >= 0:
            self._fail(redis.exceptions.TimeoutError("Timeout reading from Redis."))
            return
        self._watchdog = self._loop.call_later(-late_s, self._check_timeout)

    def _fail(self, error: redis.exceptions.RedisError) -> None:
        """Close the connection once and fail every call still waiting on it."""
        if self._failure is None:
            self._failure = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        self._out.clear()
        while self._pending:
            batch = self._pending.popleft()
            if not batch.future.done():
                batch.future.set_exception(self._failure)


def error_for(message: str) -> RedisError:
    """The exception redis-py raises for the error reply `message`: a known first word picks the class
    and is cut from the message, as redis-py's parser does (NOSCRIPT, LOADING, READONLY...)."""
    code = message.split(" ")[0]
    error_class = _ERROR_CLASSES.get(code)
    if error_class is not None:
        return error_class(message[len(code) + 1 :])
    if code == "ERR":
        rest = message[len(code) + 1 :]
        return _ERR_CLASSES.get(rest, ResponseError)(rest)
    return ResponseError(message)


def raise_error(reply: Any) -> Any:
    """`reply`, or the exception redis-py raises for it when it is an error reply."""
    if isinstance(reply, hiredis.ReplyError):
        raise error_for(str(reply))
    return reply


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


def _database(path: str, query_db: str | None) -> int:
    """The database of a URL as redis-py reads it: the query's `db`, else the path if it is a number."""
    if query_db is not None:
        return int(query_db)
    try:
        return int(unquote(path).replace("/", ""))
    except ValueError:
        return 0


# Where the primary is now: Redis Sentinel's answer, asked again at every connect (ledger/connection.py).
Locator = Callable[[], Awaitable[tuple[str, int]]]


class Multiplexer:
    """The shared connection of one client. Connects on first use and again after a failure; the
    client closes it (ledger/connection.py).

    With `locate` (Redis Sentinel), each connect asks where the primary is and checks the node says it
    is one (ROLE), so a failover is followed at the next call after the old connection fails or answers
    READONLY."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        locate: Locator | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        encoding: str | None = "utf-8",
        encoding_errors: str = "strict",
        timeout_s: float | None = 5.0,
        connect_timeout_s: float | None = 5.0,
    ) -> None:
        self._address = (host, port)
        self._locate = locate
        self._db = db
        self._auth = [a for a in (username, password) if a is not None] if password is not None else []
        self._encoding = encoding
        self._encoding_errors = encoding_errors
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def for_url(cls, url: str, *, encoding: str | None = "utf-8") -> Multiplexer | None:
        """A multiplexer to the node of the redis:// `url`, read as redis-py reads it, or None when the
        URL is not plain TCP or sets an option this class does not know (redis-py keeps those).
        `encoding` decodes replies as the client's own `decode_responses` does; None keeps bytes."""
        parts = urlparse(url)
        options = {name: values[0] for name, values in parse_qs(parts.query).items()}
        if parts.scheme != "redis" or not set(options) <= _URL_OPTIONS:
            return None
        timeout = options.get("socket_timeout")
        connect_timeout = options.get("socket_connect_timeout")
        return cls(
            unquote(parts.hostname) if parts.hostname else "localhost",
            parts.port or 6379,
            db=_database(parts.path, options.get("db")),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            encoding=encoding,
            timeout_s=float(timeout) if timeout is not None else 5.0,
            connect_timeout_s=float(connect_timeout) if connect_timeout is not None else 5.0,
        )

    def twin(self, *, extra_timeout_s: float) -> Multiplexer:
        """A multiplexer of its own to the same node, whose replies may take `extra_timeout_s` longer
        (ledger/durable.py: a WAIT there is no sign of a dead connection)."""
        twin = copy.copy(self)
        twin._connection, twin._connecting = None, None
        if self._timeout_s is not None:
            twin._timeout_s = self._timeout_s + extra_timeout_s
        return twin

    async def execute(self, *command: str | bytes | int | float) -> Any:
        """One command's reply; an error reply is raised."""
        (reply,) = await self.execute_many([command])
        return raise_error(reply)

    def execute_many(self, commands: Sequence[Command]) -> Awaitable[list[Any]]:
        """The replies of `commands`, sent back to back; error replies are returned as hiredis
        ReplyError values (see `raise_error`), as they are inside a transaction's reply. On a live
        connection this is the send's future itself, not a coroutine around it, because every script
        call of every message comes through here and a frame to create and resume shows on that path."""
        connection = self._connection
        if connection is not None and connection.usable:
            return connection.send(commands)
        return self._connect_then_send(commands)

    async def _connect_then_send(self, commands: Sequence[Command]) -> list[Any]:
        connection = await self._connect()
        return await connection.send(commands)

    async def evalsha(
        self, sha: str, source: str, keys: Sequence[str], args: Sequence[str | bytes | int | float]
    ) -> Any:
        """EVALSHA, loading the script once if Redis lacks it (a restart, a failover), as redis-py's
        AsyncScript does."""
        try:
            # `execute` inlined: every message makes two script calls, and a coroutine frame each shows.
            (reply,) = await self.execute_many((("EVALSHA", sha, len(keys), *keys, *args),))
            return raise_error(reply)
        except redis.exceptions.NoScriptError:
            await self.execute("SCRIPT", "LOAD", source)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def evalsha_then(
        self,
        sha: str,
        source: str,
        keys: Sequence[str],
        args: Sequence[str | bytes | int | float],
        read: Command,
    ) -> tuple[Any, Any]:
        """EVALSHA, then the command `read`, in one transaction (MULTI ... EXEC, written at once): one
        round trip, and the read sees exactly the state the script left, whatever other clients do.
        Loads the script once if Redis lacks it, like `evalsha`."""
        for _attempt in range(2):
            replies = await self.execute_many(
                [("MULTI",), ("EVALSHA", sha, len(keys), *keys, *args), read, ("EXEC",)]
            )
            if _is_noscript(replies[1]):
                # Refused when queued: the transaction was discarded (EXECABORT).
                await self.execute("SCRIPT", "LOAD", source)
                continue
            for reply in replies[:3]:
                raise_error(reply)
            script_reply, read_reply = raise_error(replies[3])
            if _is_noscript(script_reply):
                await self.execute("SCRIPT", "LOAD", source)
                continue
            return raise_error(script_reply), raise_error(read_reply)
        raise redis.exceptions.NoScriptError("The script is still missing after SCRIPT LOAD.")

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is not None and self._connection.usable:
                return self._connection
            if self._connection is not None:
                self._connection.close()
            self._connection = None
            connection = await self._open()
            self._connection = connection
            return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = self._address if self._locate is None else await self._locate()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _transport, connection = await loop.create_connection(
                    lambda: _Connection(self._encoding, self._encoding_errors, self._timeout_s), host, port
                )
        except (OSError, TimeoutError) as exc:
            raise redis.exceptions.ConnectionError(f"Error connecting to {host}:{port}. {exc}") from exc
        setup: list[Command] = []
        if self._auth:
            setup.append(["AUTH", *self._auth])
        if self._db:
            setup.append(["SELECT", self._db])
        if self._locate is not None:
            setup.append(["ROLE"])
        if setup:
            try:
                replies = [raise_error(reply) for reply in await connection.send(setup)]
                # Sentinel may still name a primary that was demoted a moment ago: refuse it.
                if self._locate is not None and replies[-1][0] not in ("master", b"master"):
                    raise redis.exceptions.ConnectionError(f"{host}:{port} is not the primary (ROLE).")
            except BaseException:
                connection.close()
                raise
        return connection
