"""A connection redis-py closed while another task used it (its cluster client does this in a failover)
fails the command with AttributeError inside redis-py: that is the store failing, LedgerUnavailable;
an AttributeError of our own stays a bug."""

from __future__ import annotations

import pytest
import redis.asyncio.connection

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
    assert isinstance(raised.value.__cause__, AttributeError)


async def test_outside_redis_py_it_stays_a_bug() -> None:
    with pytest.raises(AttributeError, match="ours"):
        await _our_own_bug()
