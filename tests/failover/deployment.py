"""What both failover tests run around their topology: a tenant, `chatledger serve --workers 2` on the
topology's URL in a durability mode, the clients' load, and the pass that reclaims every hold once the
failover is over."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from ledger import Keyspace, RedisClient, TenantStore
from tests.failover.load import Answer, Load, Record
from tests.redis_servers import free_port
from tests.scale.conftest import Process, base_env

# A hold's deadline in the workers: short, so a failure's holds are reclaimed within the test.
HOLD_TTL_S = 2
# The load's phases, in seconds: before the cut, cut before the kill, after the promotion.
WARM_S, CUT_S, AFTER_S = 1.5, 1.0, 1.5


@asynccontextmanager
async def serving(
    setup: RedisClient, keys: Keyspace, redis_setting: dict[str, str], durability: str, run: int, log: Path
) -> AsyncIterator[tuple[Process, Record, Load]]:
    """A tenant, two workers on `redis_setting` (the topology's URL variable) and 24 clients on 30 chats,
    started; the workers and the clients stopped on the way out."""
    tenants = TenantStore(setup, keys)
    config = await tenants.create_config(agent_name="Failover", company_name="Test")
    api_key = (await tenants.issue_key(config.config_id)).api_key
    port = free_port()
    serve = Process(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", "2"],
        base_env(
            **redis_setting, CHATLEDGER_DURABILITY=durability, CHATLEDGER_DURABILITY_TIMEOUT_MS="300",
            CHATLEDGER_KEY_PREFIX=keys.prefix, CHATLEDGER_RESERVATION_TTL_S=str(HOLD_TTL_S),
            CHATLEDGER_LOG_LEVEL="warning",
        ),
        log,
    )  # fmt: skip
    record = Record()
    load = Load(f"http://127.0.0.1:{port}", api_key, record, clients=24, seed=run)
    try:
        await wait_ready(port, serve)
        await load.start(chats=30)
        yield serve, record, load
    finally:
        await load.close()
        serve.close()


async def reclaim_every_hold(serve: Process, record: Record, load: Load) -> None:
    """Past every hold's deadline, one more message per chat reclaims what a failure left."""
    await asyncio.sleep(HOLD_TTL_S + 0.5)
    for chat_id in record.chats:
        answer = await settled_send(load, chat_id)
        assert answer.status == 200, f"no answer after the failover: {answer}: {serve.log.tail()}"


async def wait_ready(port: int, serve: Process) -> None:
    """Return once both workers could answer /readyz (the log is at `warning`, so no ready event)."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        answered = 0
        while answered < 8:
            if serve.popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not start: {serve.log.tail()}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    answered = answered + 1 if response.status == 200 else 0
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)


async def settled_send(load: Load, chat_id: str) -> Answer:
    """A message's answer once the deployment answers anything but 503 (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        answer = await load.send(chat_id)
        if answer.status != 503 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)


def statuses(record: Record) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in record.answers:
        name = str(answer.status)
        if isinstance(answer.body, dict) and "code" in answer.body:
            name += f" {answer.body['code']}"
        counts[name] = counts.get(name, 0) + 1
    return counts


def server_errors(record: Record) -> list[Answer]:
    """Answers of 500 or above other than 503: a failover must never cause one."""
    return [a for a in record.answers if a.status is not None and a.status >= 500 and a.status != 503]
