"""Reading the service's Server-Sent Events in tests, as a browser's EventSource would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

Event = tuple[str, Any]

STREAM_HEADERS = {"Accept": "text/event-stream"}


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """(event name, decoded JSON data) for each event; comments (pings) are skipped."""
    name, data = "message", list[str]()
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, msgspec.json.decode("\n".join(data))
            name, data = "message", list[str]()
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


async def all_events(response: aiohttp.ClientResponse) -> list[Event]:
    return [event async for event in events(response)]


def reply_of(received: list[Event]) -> str:
    """The text the delta events carried, joined."""
    return "".join(data["content"] for name, data in received if name == "delta")
