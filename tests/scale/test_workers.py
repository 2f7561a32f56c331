"""`chatledger serve --workers N`: N processes on one port, supervised, stopped gracefully.

Message requests are held in flight with CHATLEDGER_MESSAGE_DELAY_MS (service/delay.py): the test waits
for the `message_delayed` events of every request it sent, then signals the server, so each request is
known to be in flight when SIGTERM arrives, without a sleep.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from ledger import HistoryQuery, Keyspace, Ledger, TenantStore, connect
from service.cli import main
from service.settings import SettingsError, settings_from_env
from service.workers import GC_YOUNG_THRESHOLD
from tests.redis_servers import RedisServer, flush_all, free_ports
from tests.scale.conftest import Process, base_env

PREFIX = "clworkers"
KEYS = Keyspace(PREFIX)
IN_FLIGHT = 8

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest_asyncio.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = connect(redis_server.url)
    await flush_all(client)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def api_key(redis: Redis) -> str:
    tenants = TenantStore(redis, KEYS)
    config = await tenants.create_config(agent_name="Workers", company_name="Test")
    return (await tenants.issue_key(config.config_id)).api_key


class Client:
    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.url = f"http://127.0.0.1:{port}"

    async def create_chat(self) -> str:
        async with self.http.post(f"{self.url}/chats/", json={"token_limit": 100_000}) as response:
            assert response.status == 200
            chat_id: str = (await response.json())["chat_id"]
            return chat_id

    async def send(self, chat_id: str, n: int) -> tuple[int, Any]:
        payload = {"chat_id": chat_id, "content": f"in flight {n}"}
        async with self.http.post(f"{self.url}/chats/messages/", json=payload) as response:
            return response.status, await response.json()

    async def send_or_error(self, chat_id: str, n: int) -> tuple[int, Any] | BaseException:
        try:
            return await self.send(chat_id, n)
        except aiohttp.ClientError as exc:
            return exc


@pytest_asyncio.fixture
async def http(api_key: str) -> AsyncIterator[aiohttp.ClientSession]:
    # A connection per request, so every request is in flight on its own connection; a long total
    # timeout, so a shutdown that waited for the full delay would show as a 200, not as a client timeout.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=110)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"X-API-Key": api_key}
    ) as session:
        yield session


def _settings(server: RedisServer, **more: str) -> dict[str, str]:
    return {"REDIS_URL": server.url, "CHATLEDGER_KEY_PREFIX": PREFIX, **more}


async def _chat_state(redis: Redis, chat_id: str) -> tuple[int, int, int]:
    """(used, reserved, messages) of a chat, read from Redis itself."""
    ledger = Ledger(redis, KEYS)
    meta = await redis.hgetall(KEYS.chat_meta(chat_id))
    history = await ledger.read_history(str(meta["config"]), chat_id, HistoryQuery(limit=100))
    return int(meta["used"]), int(meta["reserved"]), history.total


class TestRefusals:
    def test_embedded_mode_refuses_several_workers(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a Redis URL the store lives in one process: --workers 2 is refused, with the reason."""
        monkeypatch.delenv("REDIS_URL", raising=False)
        monkeypatch.delenv("REDIS_CLUSTER_URL", raising=False)
        assert main(["serve", "--workers", "2"]) == 2
        err = capsys.readouterr().err
        assert "--workers needs REDIS_URL or REDIS_CLUSTER_URL" in err
        assert "cannot be shared" in err

    def test_both_redis_urls_are_refused(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A node and a cluster at once is ambiguous: refused before anything starts."""
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
        monkeypatch.setenv("REDIS_CLUSTER_URL", "redis://127.0.0.1:2")
        assert main(["serve", "--workers", "2"]) == 2
        assert "not both" in capsys.readouterr().err

    def test_workers_need_a_fixed_port(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Port 0 would give each worker its own port: refused."""
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
        assert main(["serve", "--workers", "2", "--port", "0"]) == 2
        assert "fixed --port" in capsys.readouterr().err

    def test_the_cluster_url_is_read_from_its_conventional_name(self) -> None:
        """REDIS_CLUSTER_URL (no CHATLEDGER_ prefix, like REDIS_URL) selects a real store."""
        settings = settings_from_env(
            {"REDIS_CLUSTER_URL": "redis://10.0.0.7:7000", "CHATLEDGER_WORKERS": "3"}
        )
        assert settings.redis_cluster_url == "redis://10.0.0.7:7000"
        assert settings.workers == 3
        assert not settings.embedded

    def test_a_zero_shutdown_timeout_is_refused(self) -> None:
        """aiohttp reads a zero shutdown timeout as 'wait for ever': the setting must be above 0."""
        with pytest.raises(SettingsError, match="CHATLEDGER_SHUTDOWN_TIMEOUT_S"):
            settings_from_env({"CHATLEDGER_SHUTDOWN_TIMEOUT_S": "0"})


class TestServeWorkers:
    def test_a_worker_that_cannot_boot_fails_the_start(self, tmp_path: Path) -> None:
        """With Redis unreachable no worker can start: serve exits 1 and says which worker failed,
        rather than respawning it for ever."""
        port, dead_port = free_ports(2)
        env = base_env(REDIS_URL=f"redis://127.0.0.1:{dead_port}/0")
        process = Process(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", "2"],
            env,
            tmp_path / "serve.log",
        )
        try:
            assert process.wait() == 1
        finally:
            process.close()
        assert process.log.events("worker_boot_failed")
        assert not process.log.events("workers_ready")

    async def test_sigterm_lets_in_flight_requests_finish(
        self, start_serve: Any, redis_server: RedisServer, redis: Redis, http: aiohttp.ClientSession
    ) -> None:
        """SIGTERM to the parent while requests are in flight: every one still completes with 200 and
        is charged and saved once; the workers then exit 0 and the port is closed."""
        port = free_ports(1)[0]
        server: Process = start_serve(port, 2, **_settings(redis_server, CHATLEDGER_MESSAGE_DELAY_MS="1500"))
        listening = server.log.events("worker_listening")
        assert len(listening) == 2
        # uvloop when installed (the fast extra, which the Makefile installs).
        expected_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        assert {event["loop"] for event in listening} == {expected_loop}
        # Each worker tuned its garbage collector once it was set up (service/workers.py).
        assert {event["gc_young_threshold"] for event in listening} == {GC_YOUNG_THRESHOLD}
        client = Client(http, port)
        chat_id = await client.create_chat()

        sends = [asyncio.create_task(client.send(chat_id, n)) for n in range(IN_FLIGHT)]
        await asyncio.to_thread(server.log.wait_for, "message_delayed", IN_FLIGHT, process=server.popen)
        server.popen.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*sends)

        assert [status for status, _ in results] == [200] * IN_FLIGHT
        charged = sum(round(body["tokens_charged"] * 1000) for _, body in results)
        assert await _chat_state(redis, chat_id) == (charged, 0, 2 * IN_FLIGHT)
        assert await asyncio.to_thread(server.wait) == 0
        assert len(server.log.events("worker_stopped")) == 2
        assert server.log.events("workers_stopped")[0]["exitcodes"] == {"0": 0, "1": 0}
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.create_chat()

    async def test_requests_past_the_shutdown_timeout_are_cancelled(
        self, start_serve: Any, redis_server: RedisServer, redis: Redis, http: aiohttp.ClientSession
    ) -> None:
        """With a shutdown timeout shorter than the requests, the workers stop at the timeout: the
        requests get no answer, and nothing of theirs is charged or saved."""
        port = free_ports(1)[0]
        server: Process = start_serve(
            port,
            2,
            **_settings(
                redis_server, CHATLEDGER_MESSAGE_DELAY_MS="100000", CHATLEDGER_SHUTDOWN_TIMEOUT_S="0.5"
            ),
        )
        client = Client(http, port)
        chat_id = await client.create_chat()

        sends = [asyncio.create_task(client.send_or_error(chat_id, n)) for n in range(4)]
        await asyncio.to_thread(server.log.wait_for, "message_delayed", 4, process=server.popen)
        server.popen.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*sends)

        assert all(isinstance(result, aiohttp.ClientError) for result in results), results
        assert await asyncio.to_thread(server.wait) == 0
        assert await _chat_state(redis, chat_id) == (0, 0, 0)

    async def test_a_killed_worker_is_replaced(
        self, start_serve: Any, redis_server: RedisServer, redis: Redis, http: aiohttp.ClientSession
    ) -> None:
        """A worker that dies (SIGKILL, an out-of-memory kill) is respawned on the same port; the
        service keeps answering and stops cleanly afterwards."""
        port = free_ports(1)[0]
        server: Process = start_serve(port, 2, **_settings(redis_server))
        victim = server.log.events("worker_started")[0]
        os.kill(victim["pid"], signal.SIGKILL)
        await asyncio.to_thread(server.log.wait_for, "worker_listening", 3, process=server.popen)

        died = server.log.events("worker_died")
        assert [(e["index"], e["exitcode"]) for e in died] == [(victim["index"], -signal.SIGKILL)]
        client = Client(http, port)
        chat_id = await client.create_chat()
        results = await asyncio.gather(*(client.send(chat_id, n) for n in range(20)))
        assert [status for status, _ in results] == [200] * 20
        assert await asyncio.to_thread(server.terminate) == 0

    async def test_workers_stop_when_the_parent_dies(
        self, start_serve: Any, redis_server: RedisServer, redis: Redis
    ) -> None:
        """A parent killed outright (SIGKILL: no chance to stop anything) leaves no orphan: each worker
        sees its pipe close and stops on its own."""
        port = free_ports(1)[0]
        server: Process = start_serve(port, 2, **_settings(redis_server))
        workers = [event["pid"] for event in server.log.events("worker_started")]
        server.popen.send_signal(signal.SIGKILL)
        server.popen.wait()
        await asyncio.to_thread(server.log.wait_for, "worker_stopped", 2)
        assert len(server.log.events("parent_gone")) == 2
        await asyncio.to_thread(_wait_gone, workers)


def _wait_gone(pids: list[int]) -> None:
    """Until every pid has exited (a zombie left to an init that does not reap counts as exited)."""
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[pid for pid in pids if _running(pid)]}"
        time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
