"""A connection redis-py closed while another task used it (its cluster client does this in a failover)
fails the command with AttributeError inside redis-py (before 8.2; 8.2 raises its own ConnectionError):
either way that is the store failing, LedgerUnavailable; an AttributeError of our own stays a bug."""

from __future__ import annotations

import pytest
import redis.asyncio.connection
import redis.exceptions

from ledger import LedgerUnavailable
from ledger.errors import wrap_redis_errors


@wrap_redis_errors
async def _send_on_a_closed_connection() -> None:
    connection = redis.asyncio.connection.Connection()
    # What a concurrent disconnect leaves: a reader still set, the writer gone.
    connection._reader = object()  # type: ignore[assignment]
    connection._writer = None
    await connection._send_packed_command([b"PING\\r\\n"])


@wrap_redis_errors
async def _our_own_bug() -> None:
    raise AttributeError("ours")


async def test_inside_redis_py_it_is_the_store_failing() -> None:
    with pytest.raises(LedgerUnavailable) as raised:
        await _send_on_a_closed_connection()
    assert isinstance(raised.value.__cause__, AttributeError | redis.exceptions.ConnectionError)


async def test_outside_redis_py_it_stays_a_bug() -> None:
    with pytest.raises(AttributeError, match="ours"):
        await _our_own_bug()


@wrap_redis_errors
async def _write_to_a_closed_transport() -> None:
    connection = redis.asyncio.connection.Connection()

    class OpenTransport:
        def is_closing(self) -> bool:
            return False  # redis-py 8.2 looks before it writes; the close lands after its look

    class ClosedWriter:
        transport = OpenTransport()

        def writelines(self, data: object) -> None:
            # What uvloop's transport raises once the cluster client closed it under this command.
            raise RuntimeError(
                "unable to perform operation on <TCPTransport closed=True>; the handler is closed"
            )

    connection._reader = object()  # type: ignore[assignment]
    connection._writer = ClosedWriter()  # type: ignore[assignment]
    try:
        await connection._send_packed_command([b"PING\\r\\n"])
    finally:
        connection._writer = None  # no socket was opened: nothing for its finaliser to warn of


@wrap_redis_errors
async def _our_own_runtime_error() -> None:
    raise RuntimeError("the handler is closed, but ours")


async def test_a_closed_transport_below_redis_py_is_the_store_failing() -> None:
    with pytest.raises(LedgerUnavailable) as raised:
        await _write_to_a_closed_transport()
    assert isinstance(raised.value.__cause__, RuntimeError)


async def test_a_runtime_error_of_our_own_stays_a_bug() -> None:
    with pytest.raises(RuntimeError, match="ours"):
        await _our_own_runtime_error()
