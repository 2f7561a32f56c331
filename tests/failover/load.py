"""Continuous load on a `chatledger serve` deployment, and the record of what its clients were told.

Clients send messages on many chats, top up chats and create chats, and keep every answer: each 2xx and
its body is a promise the deployment made, checked afterwards (`audit`) against what Redis holds.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from ledger import HistoryQuery, IdempotencyKey, Keyspace, Ledger, RedisClient, parse_message_id

# Every top-up adds this many tokens; a chat starts with START_TOKENS.
TOP_UP_TOKENS = 10.0
START_TOKENS = 1_000_000.0


@dataclass
class Answer:
    """One request and what the client was told: a status and body, or None when the connection
    failed (the outcome is unknown)."""

    op: str
    chat_id: str
    sent_s: float
    done_s: float
    status: int | None
    body: Any
    key: str = ""
    content: str = ""


@dataclass
class Record:
    """Every answer of a run, and the chats the load uses."""

    answers: list[Answer] = field(default_factory=list)
    chats: list[str] = field(default_factory=list)

    def ok(self, op: str) -> list[Answer]:
        return [a for a in self.answers if a.op == op and a.status == 200]

    def acknowledged_between(self, start_s: float, end_s: float) -> int:
        return sum(1 for a in self.answers if a.status == 200 and start_s <= a.done_s < end_s)

    def unavailable(self) -> tuple[int, float]:
        """How many answers were 503, and seconds from the first 503 to the last."""
        times = [a.done_s for a in self.answers if a.status == 503]
        return len(times), (max(times) - min(times)) if times else 0.0


class Load:
    """`clients` concurrent loops against `url` until `stop()`: 70% messages, 15% top-ups (each with
    its own Idempotency-Key), 15% new chats."""

    def __init__(self, url: str, api_key: str, record: Record, *, clients: int, seed: int) -> None:
        self.url = url
        self.record = record
        self._clients = clients
        self._random = random.Random(seed)
        self._stopping = asyncio.Event()
        self._counter = itertools.count()
        self._session = aiohttp.ClientSession(
            headers={"X-API-Key": api_key}, timeout=aiohttp.ClientTimeout(total=15)
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, chats: int) -> None:
        for _ in range(chats):
            answer = await self._create_chat(START_TOKENS)
            assert answer.status == 200, answer.body
            self.record.chats.append(answer.chat_id)
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self._clients)]

    async def stop(self) -> None:
        """End the loops once their requests are answered; `send` still works until `close`."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        await self._session.close()

    async def send(self, chat_id: str) -> Answer:
        content = f"m-{next(self._counter)}"
        answer = await self._call(
            "message", chat_id, "POST", "/chats/messages/", {"chat_id": chat_id, "content": content}
        )
        answer.content = content
        return answer

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            pick = self._random.random()
            chat_id = self._random.choice(self.record.chats)
            if pick < 0.70:
                await self.send(chat_id)
            elif pick < 0.85:
                key = str(uuid.uuid4())
                path = f"/chats/{chat_id}/tokens/"
                answer = await self._call(
                    "top_up", chat_id, "PUT", path, {"additional_tokens": TOP_UP_TOKENS}, key
                )
                answer.key = key
            else:
                await self._create_chat(1000.0)

    async def _create_chat(self, tokens: float) -> Answer:
        answer = await self._call("create", "", "POST", "/chats/", {"token_limit": tokens})
        if answer.status == 200:
            answer.chat_id = answer.body["chat_id"]
        return answer

    async def _call(
        self, op: str, chat_id: str, method: str, path: str, payload: dict[str, Any], key: str = ""
    ) -> Answer:
        headers = {"Idempotency-Key": key} if key else {}
        sent_s = time.monotonic()
        try:
            async with self._session.request(
                method, self.url + path, json=payload, headers=headers
            ) as response:
                body = await response.json(content_type=None)
                status: int | None = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, body = None, repr(exc)
        answer = Answer(op, chat_id, sent_s, time.monotonic(), status, body)
        self.record.answers.append(answer)
        return answer


@dataclass
class Audit:
    """What Redis holds against what the clients were told."""

    acknowledged: dict[str, int]
    chats_lost: int
    messages_lost: int
    top_ups_lost: int
    duplicated_messages: int
    charge_mismatches: int
    stuck_holds: int

    @property
    def acknowledged_lost(self) -> int:
        return self.chats_lost + self.messages_lost + self.top_ups_lost


async def audit(redis: RedisClient, keys: Keyspace, record: Record) -> Audit:
    """Compare every 2xx with the store: chats, exchanges (the AI message's id in its chat's history,
    each user message once, the chat's `used` the sum of its charges), top-ups (their idempotency
    record), and holds (none left once the chats were used again past the holds' deadline)."""
    ledger_ = Ledger(redis, keys)
    chats_lost = 0
    for answer in record.ok("create"):
        chats_lost += not await redis.exists(keys.chat_meta(answer.chat_id))
    messages_lost = duplicated = mismatches = stuck = 0
    by_chat: dict[str, list[Answer]] = {}
    for answer in record.ok("message"):
        by_chat.setdefault(answer.chat_id, []).append(answer)
    for chat_id in record.chats:
        meta = await redis.hgetall(keys.chat_meta(chat_id))
        history = await _history(ledger_, str(meta["config"]), chat_id)
        ids = {_raw_id(m.message_id) for m in history if not m.is_user}
        messages_lost += sum(1 for a in by_chat.get(chat_id, []) if _raw_id(a.body["id"]) not in ids)
        contents = [m.content for m in history if m.is_user]
        duplicated += len(contents) - len(set(contents))
        mismatches += int(meta["used"]) != sum(m.charged_milli for m in history if not m.is_user)
        stuck += await _stuck(redis, keys, ledger_, chat_id)
    top_ups_lost = 0
    for answer in record.ok("top_up"):
        digest = _digest(answer.key)
        top_ups_lost += not await redis.exists(keys.chat_idempotency(answer.chat_id, digest))
    acknowledged = {op: len(record.ok(op)) for op in ("create", "message", "top_up")}
    return Audit(acknowledged, chats_lost, messages_lost, top_ups_lost, duplicated, mismatches, stuck)


async def _stuck(redis: RedisClient, keys: Keyspace, ledger_: Ledger, chat_id: str) -> bool:
    """Whether the chat holds tokens for a hold past its deadline, or holds a sum its open holds do not
    add up to. The admin read reaps due holds first, as any next message would. A hold whose deadline
    is still ahead is not stuck: a request the failover delayed in a worker may have reserved it after
    the load stopped, and its worker may still settle it."""
    state = await ledger_.inspect_chat(chat_id)
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    # An open hold's value is its grant (digits); the other fields are resolution records.
    holds = await redis.hgetall(keys.chat_reservations(chat_id))
    open_holds = {str(rid): int(value) for rid, value in holds.items() if value.isdigit()}
    scored = await redis.zrange(keys.chat_deadlines(chat_id), 0, -1, withscores=True)
    deadlines = {str(member): float(score) for member, score in cast(list[tuple[str, float]], scored)}
    overdue = any(deadlines.get(rid, 0) <= now_ms for rid in open_holds)
    return overdue or state.reserved_milli != sum(open_holds.values())


async def _history(ledger_: Ledger, config_id: str, chat_id: str) -> list[Any]:
    items: list[Any] = []
    while True:
        page = await ledger_.read_history(config_id, chat_id, HistoryQuery(limit=100, offset=len(items)))
        items += page.items
        if not page.items or len(items) >= page.total:
            return items


def _raw_id(message_id: str) -> str:
    return parse_message_id(message_id) or message_id


def _digest(key: str) -> str:
    """The digest the top-up's record is named by (ledger/idempotency.py): of the key alone."""
    return IdempotencyKey.of(key, "top_up").digest
