"""The multiplexer: one pipelined connection for the ledger's scripts, behaving as redis-py does for them
(ledger/multiplex.py, issue 6). Real redis-server only: the multiplexer speaks the wire protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.exceptions
from redis.asyncio import Redis

from ledger import connect
from ledger.connection import PipelinedRedis, multiplexer_of
from ledger.multiplex import Multiplexer
from tests.redis_servers import RedisServer, flush_all

pytestmark = pytest.mark.redis


@pytest_asyncio.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    fresh = connect(redis_server.url)
    await flush_all(fresh)
    yield fresh
    await fresh.aclose()


def _mux(client: Redis) -> Multiplexer:
    multiplexer = multiplexer_of(client)
    assert multiplexer is not None
    return multiplexer


class TestMultiplexer:
    async def test_concurrent_calls_get_their_own_replies(self, client: Redis) -> None:
        """Calls from many tasks share one connection and each gets its own reply, in any order."""
        mux = _mux(client)
        replies = await asyncio.gather(*(mux.execute("ECHO", f"call {n}") for n in range(300)))
        assert replies == [f"call {n}" for n in range(300)]
        clients = await client.client_list()
        # The pool's connection (CLIENT LIST itself) and the multiplexer's.
        assert len(clients) == 2

    async def test_error_replies_raise_redis_py_classes(self, client: Redis) -> None:
        """An error reply raises what redis-py raises for it, and the connection goes on."""
        mux = _mux(client)
        await client.set("text", "abc")
        with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
            await mux.execute("INCR", "text")
        with pytest.raises(redis.exceptions.NoScriptError):
            await mux.execute("EVALSHA", "0" * 40, 0)
        assert await mux.execute("GET", "text") == "abc"

    async def test_a_missing_script_is_loaded_once(self, client: Redis) -> None:
        """EVALSHA of a script Redis lost (a restart, a failover) loads it and runs it."""
        mux = _mux(client)
        source = "return ARGV[1] .. KEYS[1]"
        sha = await client.script_load(source)
        await client.script_flush()
        assert await mux.evalsha(sha, source, ["k"], ["v"]) == "vk"
        await client.script_flush()
        script, read = await mux.evalsha_then(sha, source, ["k"], ["w"], ("ECHO", "read"))
        assert (script, read) == ("wk", "read")

    async def test_a_transaction_reads_what_the_script_left(self, client: Redis) -> None:
        """evalsha_then runs the script and the read as one transaction: the read sees the write."""
        mux = _mux(client)
        source = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"
        sha = await client.script_load(source)
        results = await asyncio.gather(
            *(mux.evalsha_then(sha, source, ["list"], [n], ("LRANGE", "list", 0, -1)) for n in range(50))
        )
        for length, items in results:
            assert len(items) == length
        assert sorted(length for length, _ in results) == list(range(1, 51))

    async def test_a_redis_restart_fails_calls_then_reconnects(self, redis_server: RedisServer) -> None:
        """With Redis gone a call raises ConnectionError (the API's 503); once it is back, the next call
        connects again."""
        with RedisServer() as own:
            client = connect(own.url)
            try:
                mux = _mux(client)
                assert await mux.execute("PING") == "PONG"
                own.stop()
                with pytest.raises(redis.exceptions.ConnectionError):
                    await mux.execute("PING")
                own.start()
                assert await mux.execute("PING") == "PONG"
            finally:
                await client.aclose()

    async def test_a_slow_reply_times_out(self, redis_server: RedisServer) -> None:
        """A reply later than the timeout raises TimeoutError and resets the connection; the next call
        works on a new one."""
        mux = Multiplexer("127.0.0.1", redis_server.port, timeout_s=0.2)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await mux.execute("BLPOP", "never", 2)
            assert await mux.execute("PING") == "PONG"
        finally:
            await mux.aclose()

    async def test_a_cancelled_call_does_not_shift_replies(self, client: Redis) -> None:
        """A caller cancelled while waiting drops its reply; later calls still get their own."""
        mux = _mux(client)
        waiting = asyncio.create_task(mux.execute("BLPOP", "never", 0.3))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await mux.execute("ECHO", "after") == "after"

    async def test_auth_and_database_come_from_the_url(self) -> None:
        """A password and a database number in the URL are used by the multiplexer too."""
        with RedisServer() as own:
            admin = connect(own.url)
            await admin.config_set("requirepass", "s3cret")
            client = connect(f"redis://:s3cret@127.0.0.1:{own.port}/3")
            try:
                await _mux(client).execute("SET", "where", "db3")
                assert await client.get("where") == "db3"
                assert await client.dbsize() == 1
            finally:
                # Without a password again, so the fixture can shut the server down.
                await client.config_set("requirepass", "")
                await client.aclose()
                await admin.aclose()

    def test_only_plain_tcp_is_multiplexed(self) -> None:
        """TLS and Unix sockets stay with redis-py."""
        for url in ("rediss://127.0.0.1:1/0", "unix:///tmp/redis.sock"):
            assert Multiplexer.for_url(url) is None
        assert Multiplexer.for_url("redis://127.0.0.1:1/0") is not None

    async def test_closing_the_client_closes_the_multiplexer(self, redis_server: RedisServer) -> None:
        """The client owns its multiplexer: aclose ends its connection (no socket is left open)."""
        client = connect(redis_server.url)
        assert isinstance(client, PipelinedRedis)
        mux = _mux(client)
        await mux.execute("PING")
        await client.aclose()
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(_closed_call(mux), 1)


async def _closed_call(mux: Multiplexer) -> None:
    """A call on a closed multiplexer connects again; to show it was closed, refuse that here."""
    connection = mux._connection
    if connection is None:
        raise redis.exceptions.ConnectionError("closed")
    await connection.send([("PING",)])
