"""A load generator that sends at a fixed rate whatever the answers (open loop), or as fast as its
connections are answered (closed loop), and records every answer's status and time.

wrk keeps a fixed number of connections busy: offered more than it can do, a server answers slower and
wrk sends slower, so a closed loop never offers twice a server's capacity. Overload is an open loop:
requests arrive at their own rate, and the server must refuse what it cannot serve. wrk also gives one
latency histogram for all answers, where the overload row needs the admitted and the refused apart.

Plain asyncio protocols on pre-built requests, so a request costs the generator a write and a parse of
the answer's head: it runs in the bench's own process (uvloop), beside the servers, on the same cores.
Each connection carries one request at a time (HTTP/1.1 without pipelining, as browsers and proxies
send); a request due while every connection is busy waits for the first one free, and the time it waited
is counted apart (`late`). Latency is from the write of a request to the last byte of its answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
import typing
from collections.abc import Sequence

import msgspec

# Only Content-Length framing: the bench's requests are answered with whole JSON bodies, never chunked.
_LENGTH_RE = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
# How often the open loop wakes to send what came due: short beside the latencies measured.
_TICK_S = 0.0005
# What a run waits, after its end, for answers still owed; they only end a stuck run.
_DRAIN_S = 10.0


class Answers(msgspec.Struct, kw_only=True):
    """Every answer of one run: its status and its time from write to last byte."""

    seconds: float = 0.0
    scheduled: int = 0
    statuses: list[int] = msgspec.field(default_factory=list)
    latencies_s: list[float] = msgspec.field(default_factory=list)
    # Requests written later than due because no connection was free, and sockets that failed.
    late: int = 0
    errors: int = 0

    def of(self, status: int) -> list[float]:
        return [t for s, t in zip(self.statuses, self.latencies_s, strict=True) if s == status]

    def count(self, status: int) -> int:
        return sum(1 for s in self.statuses if s == status)


def message_request(host: str, port: int, api_key: str, chat_id: str, content: str) -> bytes:
    """A whole `POST /chats/messages/` request, head and body, ready to write."""
    body = msgspec.json.encode({"chat_id": chat_id, "content": content})
    head = (
        f"POST /chats/messages/ HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.written_at = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they have its methods.
        self.transport = typing.cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.written_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        total = end + 4 + _content_length(self.buffer, end)
        if len(self.buffer) < total:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:total]
        self.busy = False
        self.run.answered(self, status, time.perf_counter() - self.written_at)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


def _content_length(buffer: bytearray, head_end: int) -> int:
    """The Content-Length of the answer whose head ends at `head_end`: aiohttp's spelling first, as
    the cheaper find, then any spelling."""
    at = buffer.find(b"\r\nContent-Length: ", 0, head_end)
    if at >= 0:
        return int(buffer[at + 18 : buffer.find(b"\r", at + 18, head_end + 2)])
    match = _LENGTH_RE.search(buffer, 0, head_end + 2)
    return int(match[1]) if match else 0


class _Run:
    """One run's connections, the requests due and not yet written, and the answers."""

    def __init__(self, requests: Sequence[bytes], *, closed: bool) -> None:
        self.requests = requests
        self.closed = closed
        self.answers = Answers()
        self.idle: collections.deque[_Connection] = collections.deque()
        self.waiting = 0
        self.sent = 0
        self.sending = True
        self.outstanding = 0
        self.drained = asyncio.Event()

    def dispatch(self) -> None:
        """Write the next request on a free connection, or leave it waiting for one."""
        if not self.idle:
            self.waiting += 1
            return
        connection = self.idle.popleft()
        connection.send(self.requests[self.sent % len(self.requests)])
        self.sent += 1
        self.outstanding += 1

    def answered(self, connection: _Connection, status: int, seconds: float) -> None:
        self.answers.statuses.append(status)
        self.answers.latencies_s.append(seconds)
        self.outstanding -= 1
        self.idle.append(connection)
        if self.waiting:
            self.waiting -= 1
            self.answers.late += 1
            self.dispatch()
        elif self.closed and self.sending:
            self.dispatch()
        if not self.sending and self.outstanding == 0:
            self.drained.set()

    def lost(self, connection: _Connection) -> None:
        if connection.busy:
            connection.busy = False
            self.answers.errors += 1
            self.outstanding -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        if not self.sending and self.outstanding == 0:
            self.drained.set()


async def run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
) -> Answers:
    """Send `requests` in turn for `seconds`: at `rate` per second (open loop), or, with no rate, one
    after another on each of `connections` (closed loop). Waits a bounded time for the last answers."""
    loop = asyncio.get_running_loop()
    state = _Run(requests, closed=rate is None)
    opened = [
        (await loop.create_connection(lambda: _Connection(state), host, port))[1] for _ in range(connections)
    ]
    state.idle.extend(opened)
    started = time.perf_counter()
    deadline = started + seconds
    try:
        if rate is None:
            for _ in range(connections):
                state.dispatch()
            await asyncio.sleep(seconds)
        else:
            await _pace(state, rate, started, deadline)
        state.answers.seconds = time.perf_counter() - started
        state.sending = False
        state.answers.scheduled = state.sent + state.waiting
        state.waiting = 0
        if state.outstanding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.drained.wait(), _DRAIN_S)
            state.answers.errors += state.outstanding
    finally:
        for connection in opened:
            if connection.transport is not None:
                connection.transport.close()
    return state.answers


async def _pace(state: _Run, rate: float, started: float, deadline: float) -> None:
    """Make requests due at `rate` from `started` until `deadline`, whatever was answered."""
    due_total = 0
    while (now := time.perf_counter()) < deadline:
        due = int((now - started) * rate) - due_total
        for _ in range(due):
            state.dispatch()
        due_total += due
        await asyncio.sleep(_TICK_S)
