"""The bare proxy: the least an aiohttp service in front of a model server and Redis does per message.

For each `POST /chats/messages/` it reads the body, does one EVALSHA of `return 1` (redis-py, the
ordinary way), and forwards a chat-completions request to the model server with one call of a pooled
aiohttp session. Non-streamed, it answers the model's JSON as it came; with `"stream": true` in the
body (the client asks as it asks chatledger), it asks the model for a stream and relays its bytes as
they come. The request it forwards is built once, at start: a system prompt, a 20-message context and
the new message, as chatledger sends them, so both send the model the same bytes. No budget, no
history, no parsing of what the model says: the limit of this stack, the baseline of the upstream rows.
`python -m bench.proxy --port P --redis-url URL --model-url http://127.0.0.1:Q/v1`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
import msgspec
from aiohttp import web

import ledger
from bench.baseline import TRIVIAL_SCRIPT, serve_until_signalled
from service.workers import loop_factory

CONTEXT_MESSAGES = 20


def model_body(*, stream: bool) -> bytes:
    """A body the size of chatledger's with a full context (what the load's messages say, in turn)."""
    from bench.load import CONTENT

    messages = [{"role": "system", "content": "You are Bench Agent, the assistant of Bench."}]
    reply = "Each message is priced before the call and charged after it, from the model's own usage count."
    messages += [
        {"role": "user" if n % 2 == 0 else "assistant", "content": CONTENT if n % 2 == 0 else reply}
        for n in range(CONTEXT_MESSAGES)
    ]
    messages.append({"role": "user", "content": CONTENT})
    body: dict[str, object] = {
        "model": "bench-model",
        "messages": messages,
        "max_tokens": 512,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return msgspec.json.encode(body)


async def serve(port: int, redis_url: str, model_url: str) -> None:
    client = ledger.connect(redis_url)
    sha = str(await client.script_load(TRIVIAL_SCRIPT))
    url = model_url.rstrip("/") + "/chat/completions"
    whole, streamed = model_body(stream=False), model_body(stream=True)
    headers = {"Content-Type": "application/json"}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def message(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        stream = b'"stream": true' in body or b'"stream":true' in body
        await client.evalsha(sha, 0)
        async with session.post(url, data=streamed if stream else whole, headers=headers) as upstream:
            if not stream:
                return web.Response(body=await upstream.read(), content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for data in upstream.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    try:
        await serve_until_signalled(message, port, "proxy")
    finally:
        await session.close()
        await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--model-url", required=True)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(args.port, args.redis_url, args.model_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
