"""A local OpenAI-compatible server for the tests: the real wire format, with failures on demand.

It serves `POST /v1/chat/completions` like api.openai.com does: one `chat.completion` JSON object, or
Server-Sent Events of `chat.completion.chunk` objects ending with `data: [DONE]`, with a usage chunk
only when `stream_options.include_usage` asks for it. Each request takes the next `Behavior` of
`FakeOpenAI.script` (the default one once the script is empty), so a test states the upstream it needs:
errors (429, 500), a slow first byte, a connection cut mid-reply, malformed or empty bodies, a stream
that pauses after k chunks, and a model server that misbehaves: usage that cannot be true (negative,
huge, fractional, a string, fields missing), usage above max_tokens, a reply that ignores max_tokens,
an error chunk after k chunks. The failures after k chunks have a whole-answer form too (the body cut,
an error object instead of the completion, a pause mid-body). Every request is recorded (path,
headers, JSON body) for the wire checks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from service.providers.openai import estimate_tokens

DEFAULT_REPLY = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
# A `usage_patch` value that removes the field from the usage object.
DROP = "<drop>"
# An array nested 100,000 deep: valid JSON that a recursive parser cannot follow.
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
# What the fake adds per message to the prompt's count, as real chat templates do: so the tests can
# tell the upstream's usage from the service's own estimate.
MESSAGE_OVERHEAD_TOKENS = 3


class Behavior(msgspec.Struct, kw_only=True):
    """How the fake answers one request. The default is a good reply with usage."""

    # The reply, one token per piece; a real model stops at max_tokens with finish_reason "length".
    reply: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_REPLY))
    # Leave usage out entirely, as some servers do even when asked for it.
    usage: bool = True
    # Answer with this HTTP error status (and an OpenAI error body) instead.
    status: int = 200
    # Wait for FakeOpenAI.release before sending anything (a slow first byte).
    hang: bool = False
    # Streamed: after this many content chunks, close the connection without finishing. Whole: close
    # it halfway through the body.
    cut_after: int | None = None
    # Streamed: after this many content chunks, wait for FakeOpenAI.release, then go on. Whole: wait
    # halfway through the body.
    pause_after: int | None = None
    # Send a body that is not a chat completion (non-streamed) or a chunk that is not JSON (streamed).
    malformed: bool = False
    # Nest a field past any parser's recursion limit: in the body (non-streamed) or the second chunk.
    deep_json: bool = False
    # Streamed: send `data: {"error": ...}` after this many content chunks. Whole: answer 200 with an
    # error object instead of the completion.
    error_after: int | None = None
    # Fields merged over the true usage, e.g. {"completion_tokens": -3}; DROP removes a field.
    usage_patch: dict[str, Any] | None = None
    # Send this as the usage, whatever it is (a string, a number); UNSET sends the true usage.
    usage_as: Any = msgspec.UNSET
    # Send the whole reply whatever max_tokens says, and report its true length in the usage.
    ignore_max_tokens: bool = False


class Recorded(msgspec.Struct):
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAI:
    """The fake's state: its script, what it received, and events the tests wait on."""

    model_name = "fake-model"

    def __init__(self) -> None:
        self.script: list[Behavior] = []
        self.default = Behavior()
        self.requests: list[Recorded] = []
        # Set by a test to let a hanging or paused answer go on.
        self.release = asyncio.Event()
        # Set when a paused stream has sent its chunks, and when its connection was dropped by the client.
        self.paused = asyncio.Event()
        self.disconnected = asyncio.Event()
        # Where the fixture serves it, e.g. http://127.0.0.1:PORT/v1 (the base URL clients are given).
        self.base_url = ""
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.handle)

    def plan(self, *behaviors: Behavior) -> None:
        self.script.extend(behaviors)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        behavior = self.script.pop(0) if self.script else self.default
        try:
            if behavior.hang:
                await self.release.wait()
            if behavior.status != 200:
                return _error(behavior.status)
            if body.get("stream"):
                return await self._stream(request, body, behavior)
            if behavior.cut_after is not None or behavior.pause_after is not None:
                return await self._whole_broken(request, body, behavior)
            return self._whole(body, behavior)
        except (asyncio.CancelledError, ConnectionResetError):
            # The client dropped the connection: aiohttp cancels the handler or the next write fails.
            self.disconnected.set()
            raise

    def _whole(self, body: dict[str, Any], behavior: Behavior) -> web.Response:
        if behavior.malformed:
            return web.Response(body=b'{"choices": [{"message": ', content_type="application/json")
        if behavior.deep_json:
            return web.Response(body=b'{"extra": ' + DEEP_JSON + b"}", content_type="application/json")
        if behavior.error_after is not None:
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}})
        pieces, finish = _reply(body, behavior)
        answer: dict[str, Any] = {
            **_envelope("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
        }
        if behavior.usage:
            answer["usage"] = _usage(body, len(pieces), behavior)
        return web.json_response(answer)

    async def _whole_broken(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior
    ) -> web.StreamResponse:
        """A good answer's headers and the first half of its body, then the cut or the pause."""
        encoded = self._whole(body, msgspec.structs.replace(behavior, cut_after=None, pause_after=None)).body
        assert isinstance(encoded, bytes)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(encoded)
        await response.prepare(request)
        await response.write(encoded[: len(encoded) // 2])
        if behavior.cut_after is not None:
            assert request.transport is not None
            request.transport.close()
            return response
        self.paused.set()
        await self.release.wait()
        await response.write(encoded[len(encoded) // 2 :])
        await response.write_eof()
        return response

    async def _stream(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with_usage = bool((body.get("stream_options") or {}).get("include_usage")) and behavior.usage
        extra = {"usage": None} if with_usage else {}
        pieces, finish = _reply(body, behavior)
        await _send(response, _chunk({"role": "assistant", "content": "", "refusal": None}, None, extra))
        for sent, piece in enumerate(pieces):
            if sent == behavior.cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if sent == behavior.error_after:
                await _send(response, {"error": {"message": "overloaded", "type": "server_error"}})
                return response
            if sent == behavior.pause_after:
                self.paused.set()
                await self.release.wait()
            if behavior.malformed and sent == 1:
                await response.write(b"data: {not json\n\n")
                continue
            if behavior.deep_json and sent == 1:
                await response.write(b'data: {"extra": ' + DEEP_JSON + b"}\n\n")
                continue
            await _send(response, _chunk({"content": piece}, None, extra))
        await _send(response, _chunk({}, finish, extra))
        if with_usage:
            usage = {"usage": _usage(body, len(pieces), behavior)}
            await _send(response, {**_envelope("chat.completion.chunk"), "choices": [], **usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _reply(body: dict[str, Any], behavior: Behavior) -> tuple[list[str], str]:
    """The pieces a real model would send for this body: cut at max_tokens, with its finish reason."""
    max_tokens = body.get("max_tokens")
    pieces = behavior.reply
    if isinstance(max_tokens, int) and len(pieces) > max_tokens and not behavior.ignore_max_tokens:
        return pieces[:max_tokens], "length"
    return list(pieces), "stop"


def prompt_tokens_of(body: dict[str, Any]) -> int:
    """The fake's prompt count: the service's estimator plus a per-message overhead."""
    return sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in body["messages"])


def _usage(body: dict[str, Any], completion_tokens: int, behavior: Behavior) -> Any:
    """The true usage, or what the behaviour sends instead."""
    if behavior.usage_as is not msgspec.UNSET:
        return behavior.usage_as
    prompt = prompt_tokens_of(body)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    for field, value in (behavior.usage_patch or {}).items():
        if value == DROP:
            usage.pop(field, None)
        else:
            usage[field] = value
    return usage


def _envelope(kind: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": kind,
        "created": int(time.time()),
        "model": FakeOpenAI.model_name,
        "system_fingerprint": None,
    }


def _chunk(delta: dict[str, Any], finish: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**_envelope("chat.completion.chunk"), "choices": [choice], **extra}


async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + msgspec.json.encode(payload) + b"\n\n")


def _error(status: int) -> web.Response:
    body = {"error": {"message": f"fake error {status}", "type": "server_error", "code": None}}
    return web.json_response(body, status=status)
