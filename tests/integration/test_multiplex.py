"""The multiplexer: one pipelined connection for the ledger's scripts, behaving as redis-py does for them
(ledger/multiplex.py). Real redis-server only: the multiplexer speaks the wire protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
import pytest_asyncio
import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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
    """One connection serves every script call of a client, and fails and recovers as redis-py does."""

    async def test_concurrent_calls_get_their_own_replies(self, client: Redis) -> None:
        """Calls from many tasks share one connection and each gets its own reply, in any order."""
        # The server is shared with earlier tests, whose connections may still be closing: only those
        # opened since this test's first one are this test's (Redis numbers connections in order).
        first = await client.client_id()
        mux = _mux(client)
        replies = await asyncio.gather(*(mux.execute("ECHO", f"call {n}") for n in range(300)))
        assert replies == [f"call {n}" for n in range(300)]
        clients = [c for c in await client.client_list() if int(c["id"]) >= first]
        # The pool's connection (CLIENT ID, then CLIENT LIST) and the multiplexer's.
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

    def test_only_plain_tcp_with_known_options_is_multiplexed(self) -> None:
        """TLS, Unix sockets and URL options that change the wire (RESP3, a client name) stay with
        redis-py."""
        for url in (
            "rediss://127.0.0.1:1/0",
            "unix:///tmp/redis.sock",
            "redis://127.0.0.1:1/0?protocol=3",
            "redis://127.0.0.1:1/0?client_name=worker",
            "redis://127.0.0.1:1/0?socket_keepalive=true",
        ):
            assert Multiplexer.for_url(url) is None, url
        for url in ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1?db=2&socket_timeout=1&max_connections=9"):
            assert Multiplexer.for_url(url) is not None, url

    async def test_closing_the_client_closes_the_multiplexer(self, redis_server: RedisServer) -> None:
        """The client owns its multiplexer: aclose ends its connection (no socket is left open)."""
        client = connect(redis_server.url)
        assert isinstance(client, PipelinedRedis)
        mux = _mux(client)
        await mux.execute("PING")
        await client.aclose()
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(_closed_call(mux), 1)


# Error replies as one Redis node sends them: every first word redis-py names a class for, the ERR
# messages it names one for, and replies it leaves as a plain ResponseError.
ERROR_REPLIES = [
    "NOSCRIPT No matching script. Please use EVAL.",
    "LOADING Redis is loading the dataset in memory",
    "READONLY You can't write against a read only replica.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "EXECABORT Transaction discarded because of previous errors.",
    "NOPERM this user has no permissions to run the 'set' command",
    "NOAUTH Authentication required.",
    "WRONGPASS invalid username-password pair or user is disabled.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "ERR max number of clients reached",
    "ERR invalid password",
    "ERR wrong number of arguments for 'auth' command",
    "ERR wrong number of arguments for 'AUTH' command",
    "ERR Client sent AUTH, but no password is set",
    "ERR Error unloading module: no such module with that name",
    "ERR problem with LDAP service",
    "ERR no such fieldset",
    "ERR value is not an integer or out of range",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "a message with no code",
]
RAISE_REPLY = "return redis.error_reply(ARGV[1])"
# Replies only a cluster node sends, with the classes redis-py's cluster client raises for them (its
# single-node client names them too from redis-py 6).
CLUSTER_REPLIES = {
    "TRYAGAIN Multiple keys request during rehashing of slot": redis.exceptions.TryAgainError,
    "CLUSTERDOWN The cluster is down": redis.exceptions.ClusterDownError,
    "CROSSSLOT Keys in request don't hash to the same slot": redis.exceptions.ClusterCrossSlotError,
    "MOVED 3999 127.0.0.1:6381": redis.exceptions.MovedError,
    "ASK 3999 127.0.0.1:6381": redis.exceptions.AskError,
}


class TestAsRedisPyDoes:
    """What the multiplexer raises and where it connects match redis-py, whichever version is installed."""

    @pytest.mark.parametrize("message", ERROR_REPLIES)
    async def test_an_error_reply_raises_what_redis_py_raises(
        self, redis_server: RedisServer, client: Redis, message: str
    ) -> None:
        """Same class, same message: the ledger and its callers cannot tell which client ran a script."""
        # No retries: redis-py retries errors it files under ConnectionError, the multiplexer does not.
        plain = Redis.from_url(redis_server.url, decode_responses=True, retry=Retry(NoBackoff(), 0))
        try:
            with pytest.raises(redis.exceptions.RedisError) as by_redis_py:
                await plain.eval(RAISE_REPLY, 0, message)
        finally:
            await plain.aclose()
        with pytest.raises(redis.exceptions.RedisError) as by_multiplexer:
            await _mux(client).execute("EVAL", RAISE_REPLY, 0, message)
        assert type(by_multiplexer.value) is type(by_redis_py.value)
        assert by_multiplexer.value.args == by_redis_py.value.args

    @pytest.mark.parametrize("message", CLUSTER_REPLIES)
    async def test_a_cluster_reply_raises_the_cluster_class(self, client: Redis, message: str) -> None:
        """A node in cluster mode behind a single-node URL raises what a cluster client would see."""
        with pytest.raises(CLUSTER_REPLIES[message]) as raised:
            await _mux(client).execute("EVAL", RAISE_REPLY, 0, message)
        assert type(raised.value) is CLUSTER_REPLIES[message]
        assert str(raised.value) == message.split(" ", 1)[1]

    @pytest.mark.parametrize("where", ["/3", "/0?db=3", "?db=3&socket_timeout=2&health_check_interval=1"])
    async def test_the_url_is_read_as_redis_py_reads_it(self, where: str) -> None:
        """User, percent-encoded password and database from the URL: what the multiplexer writes, the
        client's pool reads."""
        password = "p@ss:w/rd%1"
        with RedisServer() as own:
            admin = connect(own.url)
            await admin.acl_setuser(
                "ledger", enabled=True, passwords=[f"+{password}"], keys="*", commands=["+@all"]
            )
            client = connect(f"redis://ledger:{quote(password, safe='')}@127.0.0.1:{own.port}{where}")
            try:
                await _mux(client).execute("SET", "where", "db3")
                assert await client.get("where") == "db3"
                assert (await client.info("keyspace")).keys() == {"db3"}
                assert await _mux(client).execute("ACL", "WHOAMI") == "ledger"
            finally:
                await client.aclose()
                await admin.aclose()

    async def test_a_timeout_in_the_url_is_used(self, redis_server: RedisServer) -> None:
        """socket_timeout in the URL bounds the multiplexer's replies as it bounds the pool's."""
        mux = Multiplexer.for_url(f"{redis_server.url}?socket_timeout=0.2")
        assert mux is not None
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await mux.execute("BLPOP", "never", 2)
        finally:
            await mux.aclose()


async def _closed_call(mux: Multiplexer) -> None:
    """A call on a closed multiplexer connects again; to show it was closed, refuse that here."""
    connection = mux._connection
    if connection is None:
        raise redis.exceptions.ConnectionError("closed")
    await connection.send([("PING",)])
