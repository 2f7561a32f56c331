"""A fast fake OpenAI-compatible model server for the upstream rows: canned answers, nearly free.

It answers every `POST .../chat/completions` with the same reply: one `chat.completion` object, or, when
the body asks for `"stream":true`, the same reply as Server-Sent Events of `chat.completion.chunk`
objects (one token per chunk, then the finish chunk, the usage chunk and `data: [DONE]`), all written at
once in chunked transfer encoding, as a model server that has the reply ready would. It is a bare
asyncio protocol with prebuilt answers, not aiohttp, so that what it costs per request stays small next
to what is measured: the proxies in front of it. `python -m bench.fake_model --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import cast

import msgspec

# The reply, one token per chunk: 20 tokens, as a short answer of a chat assistant.
REPLY = [
    "Each",
    " message",
    " is",
    " priced",
    " before",
    " the",
    " call",
    " and",
    " charged",
    " after",
    " it",
    ",",
    " from",
    " the",
    " model",
    "'s",
    " own",
    " usage",
    " count",
    ".",
]
PROMPT_TOKENS = 420
_ENVELOPE = {"id": "chatcmpl-bench", "created": 1_700_000_000, "model": "bench-model"}
_USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": len(REPLY),
    "total_tokens": PROMPT_TOKENS + len(REPLY),
}
# The largest request head accepted; more is a broken client, and the connection is dropped.
HEAD_MAX = 65536


def whole_body() -> bytes:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "".join(REPLY)},
        "finish_reason": "stop",
    }
    return msgspec.json.encode(
        {**_ENVELOPE, "object": "chat.completion", "choices": [choice], "usage": _USAGE}
    )


def stream_events() -> list[bytes]:
    """The SSE events of the streamed reply, each `data: ...\\n\\n`."""

    def chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**_ENVELOPE, "object": "chat.completion.chunk", "choices": [choice], "usage": None}

    payloads: list[object] = [chunk({"role": "assistant", "content": ""}, None)]
    payloads += [chunk({"content": piece}, None) for piece in REPLY]
    payloads.append(chunk({}, "stop"))
    payloads.append({**_ENVELOPE, "object": "chat.completion.chunk", "choices": [], "usage": _USAGE})
    events = [b"data: " + msgspec.json.encode(p) + b"\n\n" for p in payloads]
    return [*events, b"data: [DONE]\n\n"]


def _answers() -> tuple[bytes, bytes]:
    body = whole_body()
    whole = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in stream_events())
    stream = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    return whole, stream


WHOLE_ANSWER, STREAM_ANSWER = _answers()


class FakeModel(asyncio.Protocol):
    """HTTP/1.1 keep-alive: a head with Content-Length, its body, the canned answer; repeat."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_MAX:
                    self._transport.close()
                return
            length = _content_length(bytes(self._buffer[:end]))
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._transport.write(STREAM_ANSWER if b'"stream":true' in body else WHOLE_ANSWER)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeModel, "127.0.0.1", port, reuse_port=True, backlog=1024)
    print(f"listening pid={os.getpid()}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    from service.workers import loop_factory

    parser = argparse.ArgumentParser(prog="python -m bench.fake_model", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
