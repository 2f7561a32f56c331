"""The HTTP client of the `openai` provider: keep-alive HTTP/1.1 POSTs to one server, pooled.

Why not aiohttp's client, which the provider used before: per request it builds a URL, a header
multidict, a request object with tracing hooks and a payload writer task, and wraps the answer in a
stream object with its own buffering; for a 2 KB JSON POST to one known server that was most of the
CPU a worker spent on the model call. This client writes a head built once (only Content-Length and
Accept change per request) and parses the answer with httptools (llhttp, the parser Node.js uses):
status, headers, Content-Length or chunked bodies, keep-alive. It does what a POST to a model server
needs and nothing else: no redirects, no cookies, no proxies, no compression (it sends no
Accept-Encoding, so a server answers with the identity encoding).

Every wait for bytes is bounded by the read timeout and by the caller's deadline, whichever comes
first (TimeoutError); a connection is made within the connect timeout. A connection goes back to the
pool only after its answer was read whole and the server keeps it alive; anything else closes it,
which is how a server learns that its reply is no longer wanted.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

# Bytes of an answer buffered before the server is asked to wait (reading paused): a client reading a
# stream slowly must not make the worker hold a whole reply in memory.
BUFFER_HIGH = 1 << 16


class UpstreamError(ConnectionError):
    """The connection failed or closed before the answer was whole, or the answer was not HTTP."""


class _Connection(asyncio.Protocol):
    """One connection and the answer being read on it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The body's pieces, taken by `take`. httptools looks its callbacks up once, when the parser is
        # made, so `on_body` is this list's own append: a streamed answer brings a piece per token,
        # and each then costs no Python call.
        self._chunks: list[bytes] = []
        self.on_body = self._chunks.append
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._start()

    def _start(self) -> None:
        if getattr(self, "_paused", False) and self.transport is not None:
            self.transport.resume_reading()  # the answer before was read whole, unread bytes and all
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.error: Exception | None = None
        self._chunks.clear()
        # Bytes read since the body was last taken, framing included: a bound on what is buffered.
        self._buffered = 0
        self._paused = False

    @property
    def reusable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.error is None

    def send(self, data: bytes) -> None:
        """Start an exchange: the previous answer was read whole (or this is a new connection)."""
        assert self.transport is not None
        self._start()
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.error = self.error or UpstreamError("closed")

    # --- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"not an HTTP answer: {exc}"))
            return
        # Once per read, not per body chunk: a streamed answer brings a chunk per token.
        if self._chunks:
            self._buffered += len(data)
            if self._buffered > BUFFER_HIGH and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> None:
        # An answer without Content-Length or chunking ends with the connection.
        if self.headers_done and not self.complete and self._until_close():
            self.complete = True
        self._fail(UpstreamError("the server closed the connection"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof_received()

    # --- httptools callbacks ---------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if not self._parser.should_keep_alive() and self.transport is not None:
            self.transport.close()
        self._wake()

    # --- reading -------------------------------------------------------------------------------------
    def _until_close(self) -> bool:
        chunked = "chunked" in self.headers.get("transfer-encoding", "")
        return "content-length" not in self.headers and not chunked

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout_s: float, deadline: float) -> None:
        """Until something arrives (or the connection fails); TimeoutError after `timeout_s` or at
        `deadline` (loop time), whichever is first."""
        self._waiter = waiter = self._loop.create_future()
        timer = self._loop.call_at(min(self._loop.time() + timeout_s, deadline), _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def take(self) -> bytes:
        """What the body has buffered, b"" if nothing."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """An answer whose headers were read. Read its body, then `release()` it (or `close()` it to drop
    the connection); until then it holds one of the pool's connections."""

    def __init__(self, pool: HttpPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection = connection
        self.status = connection.status
        # Names lowercased.
        self.headers: Mapping[str, str] = connection.headers
        self._done = False

    async def read_some(self, deadline: float) -> bytes:
        """The body's next bytes (waiting for at least one), b"" at its end."""
        connection = self._connection
        while True:
            data = connection.take()
            if data:
                return data
            if connection.complete:
                return b""
            if connection.error is not None:
                raise connection.error
            await connection.wait(self._pool.read_timeout_s, deadline)

    async def read(self, deadline: float) -> bytes:
        """The whole body."""
        connection = self._connection
        if connection.complete:  # it came with the head, as a short answer does: no wait
            return connection.take()
        parts = []
        while data := await self.read_some(deadline):
            parts.append(data)
        return b"".join(parts)

    def release(self) -> None:
        """Done with the answer: the connection is kept if the answer was read whole, else closed."""
        if not self._done:
            self._done = True
            self._pool.give_back(self._connection)

    def close(self) -> None:
        if not self._done:
            self._connection.close()
            self.release()


class HttpPool:
    """Connections to the server of `url` (http or https), at most `limit` at once; POSTs to its path."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        limit: int = 100,
        wait_s: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or ""
        secure = parts.scheme == "https"
        self._port = parts.port or (443 if secure else 80)
        # The system's trusted CAs and hostname checks, as aiohttp's client had them.
        self._ssl = (ssl_context or ssl.create_default_context()) if secure else None
        host = self._host if parts.port is None else f"{self._host}:{parts.port}"
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        # How long a POST waits for one of the `limit` connections when all are busy: a bound of its
        # own, so that a full pool fails a call quickly instead of spending its exchange's deadline.
        self.wait_s = wait_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: set[_Connection] = set()

    def time(self) -> float:
        """The event loop's clock, which deadlines are on. The loop is looked up once: each
        `asyncio.get_running_loop()` is a getpid() system call (it checks for a fork)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    async def post(self, body: bytes, *, accept: bytes, deadline: float) -> Response:
        """POST `body` (JSON) and read the answer's head; its body is the caller's to read."""
        if self._slots.locked():
            async with asyncio.timeout_at(min(deadline, self.time() + self.wait_s)):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        connection: _Connection | None = None
        try:
            connection = self._idle_connection() or await self._new_connection(deadline)
            head = b"%sAccept: %s\r\nContent-Length: %d\r\n\r\n" % (self._head, accept, len(body))
            connection.send(head + body)
            while not connection.headers_done:
                if connection.error is not None:
                    raise connection.error
                await connection.wait(self.read_timeout_s, deadline)
        except BaseException:
            if connection is not None:
                connection.close()
                self.give_back(connection)
            else:
                self._slots.release()
            raise
        return Response(self, connection)

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
            self._open.discard(connection)
        return None

    async def _new_connection(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_timeout_s)):
            _transport, connection = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        self._open.add(connection)
        return connection

    def give_back(self, connection: _Connection) -> None:
        """A connection's exchange is over: idle if it can serve another, else gone; its slot is free."""
        self._slots.release()
        if connection.complete and connection.reusable:
            self._idle.append(connection)
        else:
            connection.close()
            self._open.discard(connection)

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
