"""Deltas that arrive together travel together, one event each, and none waits for the next.

The `openai` provider parses whatever one read of the model's stream holds and hands its deltas on as
one batch; the relay writes a batch's events in one write. The budget is still counted per delta, the
SSE parser gives the same events however the bytes are split, and the first delta goes out while the
model is still generating.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

import ledger
from service.providers import CompletionRequest, ProviderError, ReplyStream, StreamEnd, Usage
from service.providers.openai import _SseEvents, _StreamState, estimate_tokens
from tests.providers.fake_openai import Behavior, FakeOpenAI
from tests.providers.sse import STREAM_HEADERS, events
from tests.providers.upstream import CONTENT, PATIENT_S, Upstream

REQUEST = CompletionRequest(system_prompt="", context=[], user_content="Hi", max_tokens=3)

STREAM = (
    b": a comment\r\n"
    b'data: {"a": "caf\xc3\xa9"}\r\n\r\n'
    b"event: ignored\n"
    b'data: {"b":\n'
    b"data: 1}\n\n"
    b"retry: 10\n"
    b"data: [DONE]\n\n"
)
EVENTS = ['{"a": "café"}'.encode(), b'{"b":\n1}', b"[DONE]"]


def _parse(pieces: list[bytes]) -> list[bytes]:
    parser = _SseEvents()
    found = [event for piece in pieces for event in parser.feed(piece)]
    return found + list(parser.close())


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=8))
def test_the_same_events_however_the_bytes_are_split(cuts: list[int]) -> None:
    """Reads that end anywhere (inside a line, between \\r and \\n, inside a UTF-8 character)."""
    assert _parse(_split(STREAM, cuts)) == EVENTS


def _by_the_spec(stream: bytes) -> list[bytes]:
    """The data of each event, line by line as the SSE spec reads them (LF or CRLF line ends)."""
    found, data = [], list[bytes]()
    lines = stream.split(b"\n")
    for line in lines[:-1]:
        line = line.removesuffix(b"\r")
        if not line:
            if data:
                found.append(b"\n".join(data))
            data = []
        elif line.split(b":", 1)[0] == b"data":  # a line without a colon is a field with no value
            data.append(line[5:].removeprefix(b" "))
    last = lines[-1].removesuffix(b"\r")
    if last.split(b":", 1)[0] == b"data":
        data.append(last[5:].removeprefix(b" "))
    if data:
        found.append(b"\n".join(data))
    return found


# The pieces of a model's stream: mostly what OpenAI sends (`data: <json>` and a blank line), mixed with
# what the SSE format also allows, so that reads of plain events and of anything else meet.
_LINES = st.sampled_from(
    [
        b'data: {"x": 1}\n\n',
        b"data: [DONE]\n\n",
        b"data: a\r\n\r\n",
        b": keep-alive\n\n",
        b"data: one\ndata: two\n\n",
        b"event: e\ndata: f\n\n",
        b"data:tight\n\n",
        b"\n",
        b"data: \n\n",
        b"data:  spaced\n\n",
        b"id: 7\n",
        b"data: data: nested\n\n",
    ]
)


@given(st.lists(_LINES, max_size=12), st.lists(st.integers(min_value=0), max_size=6))
def test_plain_and_other_events_however_split_read_as_the_spec_says(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(lines)
    assert _parse(_split(stream, cuts)) == _by_the_spec(stream)


def test_an_event_the_body_ends_without_a_blank_line_still_counts() -> None:
    assert _parse([b"data: last"]) == [b"last"]


@pytest.mark.parametrize("chunk", [b'{"choices": [{"delta": {"content": "\xff"}}]}', b"\xff"])
def test_a_stream_that_is_not_utf8_fails_after_the_deltas_before_it(chunk: bytes) -> None:
    good = b'{"choices": [{"delta": {"content": "ok"}}]}'
    deltas: list[str] = []
    with pytest.raises(ProviderError):
        _StreamState().read([good, chunk, good], deltas)
    assert deltas == ["ok"]


async def _events(*batches: list[str]) -> AsyncGenerator[str | list[str] | StreamEnd, None]:
    for batch in batches:
        yield batch
    yield StreamEnd(truncated=False, usage=Usage(5, 2))


async def test_batches_are_counted_per_delta_and_cut_at_the_budget() -> None:
    """A batch that crosses max_tokens is cut inside: 3 deltas of the budget reach the client."""
    reply = ReplyStream(REQUEST, _events(["a", "", "b"], ["c", "d", "e"]), estimate_tokens)
    assert [batch async for batch in reply.batches()] == [["a", "b"], ["c"]]
    completion = reply.completion()
    assert (completion.content, completion.completion_tokens) == ("abc", 3)
    assert (completion.truncated, completion.over_budget, completion.estimated) == (True, True, True)


async def test_deltas_unpack_the_batches() -> None:
    reply = ReplyStream(REQUEST, _events(["a", "b"], ["c"]), estimate_tokens)
    assert [delta async for delta in reply.deltas()] == ["a", "b", "c"]
    assert reply.completion().completion_tokens == 2  # the upstream's usage


@pytest_asyncio.fixture
async def upstream(
    aiohttp_client: Any, redis_client: Redis, tenants: ledger.TenantStore, fake_openai: FakeOpenAI
) -> Upstream:
    return Upstream(redis_client, tenants, fake_openai, aiohttp_client)


class TestRelay:
    async def test_the_first_delta_does_not_wait_for_the_next(self, upstream: Upstream) -> None:
        """The model sends one delta and pauses: the client has it while the model is paused."""
        upstream.fake.plan(Behavior(pause_after=1))
        api, _config = await upstream.api(settings=upstream.settings(openai_read_timeout_s=PATIENT_S))
        chat = (await api.create_chat(10_000))["chat_id"]
        headers = {"X-API-Key": api.api_key, **STREAM_HEADERS}
        body = msgspec.json.encode({"chat_id": chat, "content": CONTENT})
        async with api.client.post("/chats/messages/", data=body, headers=headers) as response:
            received = events(response)
            name, data = await anext(received)
            assert upstream.fake.paused.is_set()
            assert (name, data) == ("delta", {"content": "The"})
            upstream.fake.release.set()
            rest = [event async for event in received]
        assert [name for name, _ in rest] == ["delta"] * 9 + ["done"]

    async def test_every_delta_is_its_own_event(self, upstream: Upstream) -> None:
        """However the model's chunks were read, the client gets one `delta` event per token."""
        reply = [f" w{n}" for n in range(40)]
        upstream.fake.default = Behavior(reply=reply)
        api, _config = await upstream.api()
        chat = (await api.create_chat(10_000))["chat_id"]
        headers = {"X-API-Key": api.api_key, **STREAM_HEADERS}
        body = msgspec.json.encode({"chat_id": chat, "content": CONTENT})
        async with api.client.post("/chats/messages/", data=body, headers=headers) as response:
            received = [event async for event in events(response)]
        assert [data["content"] for name, data in received if name == "delta"] == reply
        assert received[-1][1]["completion_tokens"] == 40
