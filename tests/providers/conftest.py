"""The fake OpenAI-compatible upstream and an `openai` provider pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestServer

from service.providers.openai import OpenAIProvider
from tests.providers.fake_openai import FakeOpenAI

# Short enough that the slow-first-byte tests take a fraction of a second, long enough for a loaded CI.
READ_TIMEOUT_S = 0.2


@pytest_asyncio.fixture
async def fake_openai(aiohttp_server: Any) -> AsyncIterator[FakeOpenAI]:
    """The fake upstream on 127.0.0.1, a free port; hanging answers are released at the end."""
    fake = FakeOpenAI()
    server: TestServer = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1"))
    yield fake
    fake.release.set()


@pytest_asyncio.fixture
async def openai_provider(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    """The provider on the fake, with no retry backoff so failure tests stay fast."""
    provider = OpenAIProvider(
        base_url=fake_openai.base_url,
        api_key="sk-test-key",
        model="fake-model",
        read_timeout_s=READ_TIMEOUT_S,
        total_timeout_s=10,
        max_retries=2,
        retry_backoff_s=0,
    )
    yield provider
    await provider.close()
