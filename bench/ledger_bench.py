"""The ledger alone: reserve+settle pairs per second through the Python client, against `redis-benchmark`
running EVALSHA of a trivial script on the same Redis.

The pairs are what a message costs the ledger, with the service's own arguments: a context of up to 20
messages and 4000 tokens (the defaults), a question and a reply of the offline model's length, on
`concurrency` chats at once from one process (one worker's share). The baseline is Redis answering
`EVALSHA <sha of "return 1"> 0` to 50 clients: the most script calls per second this Redis gives; two
of them per pair is the ceiling a pair could reach.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import msgspec

import ledger
from bench.baseline import TRIVIAL_SCRIPT
from bench.redis_stats import cpu_seconds

QUESTION = "How does the token budget of this chat work, and what does a message cost?"
REPLY = (
    "(chatledger offline model, not an LLM) You wrote 17 tokens: “How does the token budget of this chat "
    "work, and what …”. I see 20 earlier messages in this chat. Point chatledger at a real model to get "
    "real answers."
)
# Token counts of the two texts by the offline model's tokenizer (they only price the exchange).
QUESTION_TOKENS, REPLY_TOKENS = 17, 44
HISTORY_MESSAGES, HISTORY_TOKENS = 20, 4000


class PairsResult(msgspec.Struct, frozen=True, kw_only=True):
    pairs: int
    seconds: float
    # Redis's CPU time (user + system) during the timed pairs.
    redis_cpu_s: float
    # This process's CPU time during them: the Python client's side of each pair (the two
    # sides share the machine's 2 CPUs, and both come near a CPU of their own).
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


async def _pair(book: ledger.Ledger, config: ledger.ConfigRecord, chat_id: str) -> None:
    held = await book.reserve(
        config,
        chat_id,
        prompt_tokens=QUESTION_TOKENS,
        completion_tokens_max=config.max_output_tokens,
        history_tokens_max=HISTORY_TOKENS,
        history_count_max=HISTORY_MESSAGES,
    )
    await book.settle(
        held,
        charge_milli=(QUESTION_TOKENS + REPLY_TOKENS) * 1000,
        user_content=QUESTION,
        user_tokens=QUESTION_TOKENS,
        reply_content=REPLY,
        reply_tokens=REPLY_TOKENS,
    )


async def ledger_pairs(
    redis_url: str, *, seconds: float, concurrency: int, max_pairs: int, warmup_pairs: int
) -> PairsResult:
    """Pairs per second from `concurrency` tasks on their own chats, after a warm-up that gives every
    chat a full context; bounded by time and by `max_pairs`."""
    client = ledger.connect(redis_url)
    try:
        keys = ledger.Keyspace("clbench")
        config = await ledger.TenantStore(client, keys).create_config(
            agent_name="Bench", company_name="Bench"
        )
        book = ledger.Ledger(client, keys)
        await book.start()
        chats = [(await book.create_chat(config, 10**15)).chat_id for _ in range(concurrency)]
        done = 0
        deadline = 0.0

        async def run(chat_id: str, pairs: int, until: float) -> None:
            nonlocal done
            for _ in range(pairs):
                if until and time.perf_counter() >= until:
                    return
                await _pair(book, config, chat_id)
                done += 1

        await asyncio.gather(*(run(chat_id, warmup_pairs, 0.0) for chat_id in chats))
        done = 0
        cpu_before = await cpu_seconds(client)
        client_before = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(run(chat_id, max_pairs // concurrency, deadline) for chat_id in chats))
        elapsed = time.perf_counter() - started
        client_cpu_s = time.process_time() - client_before
        cpu_s = await cpu_seconds(client) - cpu_before
        return PairsResult(pairs=done, seconds=elapsed, redis_cpu_s=cpu_s, client_cpu_s=client_cpu_s)
    finally:
        await client.aclose()


def redis_benchmark_available() -> bool:
    return shutil.which("redis-benchmark") is not None


async def load_trivial_script(redis_url: str) -> str:
    client = ledger.connect(redis_url)
    try:
        return str(await client.script_load(TRIVIAL_SCRIPT))
    finally:
        await client.aclose()


def redis_benchmark_evalsha(port: int, sha: str, *, requests: int, clients: int = 50) -> float:
    """EVALSHA of the trivial script per second, as redis-benchmark measures it (no pipelining)."""
    command = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients)]
    command += ["-n", str(requests), "--csv", "EVALSHA", sha, "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith('"EVALSHA')]
    if not rows:
        raise RuntimeError(f"redis-benchmark printed no result: {done.stdout}{done.stderr}")
    return float(rows[-1].split(",")[1].strip('"'))
