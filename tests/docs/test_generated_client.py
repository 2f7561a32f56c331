"""A Python client generated from the live `/openapi.json` by openapi-python-client, as a client's
developer would make one: the generator warns of nothing, and the client drives the README's whole
walk-through with every 2xx parsed into its typed model."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest

from tests.docs.conftest import ADMIN_TOKEN, Started
from tests.docs.walkthrough import start_environment, walkthrough

PACKAGE = "chatledger_client"


class Generated:
    """The generated package: its models and its operations' modules, by name."""

    def __init__(self, root: ModuleType) -> None:
        self.root = root
        self.models = importlib.import_module(f"{PACKAGE}.models")

    def api(self, tag: str, operation: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{tag}.{operation}")

    @contextlib.contextmanager
    def client(self, url: str, token: str, header: str, prefix: str = "") -> Iterator[Any]:
        """An AuthenticatedClient, its HTTP connections closed at the end."""
        with self.root.AuthenticatedClient(
            base_url=url, token=token, auth_header_name=header, prefix=prefix, raise_on_unexpected_status=True
        ) as client:
            yield client


@pytest.fixture(scope="module")
def generation(
    readme_service: Started, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Generated]]:
    """Generate the client from the running service's document; the generator's own output with it."""
    directory = tmp_path_factory.mktemp("client")
    document = directory / "openapi.json"
    with urllib.request.urlopen(f"{readme_service.url}/openapi.json", timeout=10) as response:
        document.write_bytes(response.read())
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert generator is not None, "openapi-python-client is a dev dependency"
    # The export's NDJSON is bytes to a generated client: the generator reads only JSON, text and bytes,
    # and takes this mapping, as a client's own generation would (docs/operations.md).
    config = directory / "generator.yaml"
    config.write_text("content_type_overrides:\n  application/x-ndjson: application/octet-stream\n")
    # The generator formats its output with ruff, which it looks for on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [
            generator,
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            "--config",
            str(config),
            "--output-path",
            str(directory / PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(directory))
    try:
        yield result.stdout + result.stderr, Generated(importlib.import_module(PACKAGE))
    finally:
        sys.path.remove(str(directory))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def parsed(response: Any, model: type, status: int = 200) -> Any:
    """The response's status, and its body parsed into `model`."""
    assert response.status_code == status, response.content
    assert isinstance(response.parsed, model), (model, response.parsed, response.content)
    return response.parsed


@pytest.mark.slow
class TestGeneratedClient:
    """openapi-python-client makes a whole typed client of the document."""

    def test_no_generator_warning(self, generation: tuple[str, Generated]) -> None:
        """The generator parses every operation and schema: no warning, no error (it used to warn 7
        times: arrays without items left 7 answers unparsed)."""
        output, generated = generation
        assert "warning" not in output.lower(), output
        assert "error" not in output.lower(), output
        assert hasattr(generated.models, "ChatOut")
        assert hasattr(generated.models, "StreamDone")

    def test_drives_the_walkthrough(self, generation: tuple[str, Generated], readme_service: Started) -> None:
        """The README's walk-through through the generated client: each answer parsed into its model,
        with the same figures (51.0, 98.0 and 141.0 charged; 1500.0 and 290.0; 402; chat_deleted)."""
        _output, gen = generation
        m = gen.models
        key = start_environment(walkthrough()[0])["CHATLEDGER_DEMO_API_KEY"]
        with gen.client(readme_service.url, key, "X-API-Key") as api:
            chat_id = self._walk(gen, api)
        with gen.client(readme_service.url, ADMIN_TOKEN, "Authorization", "Bearer") as admin:
            seen = parsed(
                gen.api("admin", "get_admin_chats_chat_id").sync_detailed(chat_id, client=admin), m.AdminChat
            )
            assert (seen.deleted, seen.messages, seen.token_used) == (True, [], 290.0)
            restored = parsed(
                gen.api("admin", "post_admin_chats_chat_id_restore").sync_detailed(chat_id, client=admin),
                m.AdminChat,
            )
            assert restored.deleted is False

    @staticmethod
    def _walk(gen: Generated, api: Any) -> UUID:
        """The API key's part of the walk-through; the chat's id, deleted at the end."""
        m = gen.models

        config = parsed(gen.api("chats", "get_chat_config").sync_detailed(client=api), m.ConfigOut)
        assert config.agent_name == "Demo Agent"
        created = parsed(
            gen.api("chats", "post_chats").sync_detailed(
                client=api, body=m.CreateChatRequest(token_limit=1000)
            ),
            m.ChatOut,
        )
        assert (created.token_limit, created.token_used, created.messages) == (1000.0, 0.0, [])
        chat_id = created.chat_id
        assert isinstance(chat_id, UUID)
        chat = parsed(gen.api("chats", "get_chats_chat_id").sync_detailed(chat_id, client=api), m.ChatOut)
        assert chat.chat_id == chat_id

        send = gen.api("chats", "post_chats_messages")
        reply = parsed(
            send.sync_detailed(
                client=api, body=m.SendMessageRequest(chat_id=chat_id, content="What does a token budget do?")
            ),
            m.MessageOut,
        )
        assert (reply.is_user, reply.tokens_charged) == (False, 51.0)
        history = parsed(
            gen.api("chats", "get_chats_chat_id_messages").sync_detailed(
                chat_id, client=api, limit=10, offset=0
            ),
            m.PageMessageOut,
        )
        assert [item.is_user for item in history.items] == [True, False]
        assert all(isinstance(item, m.MessageOut) for item in history.items)

        done = TestGeneratedClient._stream(gen, api, chat_id, "And a streamed reply?")
        assert (done.tokens_charged, done.token_used) == (98.0, 149.0)

        retried = [
            parsed(
                send.sync_detailed(
                    client=api,
                    idempotency_key="retry-me-1",
                    body=m.SendMessageRequest(chat_id=chat_id, content="Charge me once"),
                ),
                m.MessageOut,
            )
            for _ in range(2)
        ]
        assert retried[0].to_dict() == retried[1].to_dict()
        assert retried[0].tokens_charged == 141.0
        topped = parsed(
            gen.api("chats", "put_chats_chat_id_tokens").sync_detailed(
                chat_id, client=api, body=m.AddTokensRequest(additional_tokens=500)
            ),
            m.ChatOut,
        )
        assert (topped.token_limit, topped.token_used) == (1500.0, 290.0)
        listing = parsed(gen.api("chats", "get_chats_by_config_id").sync_detailed(client=api), m.PageChatOut)
        assert [item.chat_id for item in listing.items] == [chat_id]

        small = parsed(
            gen.api("chats", "post_chats").sync_detailed(client=api, body=m.CreateChatRequest(token_limit=1)),
            m.ChatOut,
        )
        refused = parsed(
            send.sync_detailed(
                client=api, body=m.SendMessageRequest(chat_id=small.chat_id, content="Hello?")
            ),
            m.InsufficientTokensBody,
            402,
        )
        assert (refused.code, refused.tokens_available, refused.tokens_needed) == (
            "insufficient_tokens",
            1.0,
            3.0,
        )

        deleted = parsed(
            gen.api("chats", "delete_chats_chat_id").sync_detailed(chat_id, client=api), m.ChatOut
        )
        assert (deleted.deleted, deleted.token_used) == (True, 290.0)
        gone = parsed(
            gen.api("chats", "get_chats_chat_id").sync_detailed(chat_id, client=api), m.ErrorBody, 404
        )
        assert gone.code == "chat_deleted"

        return chat_id

    @staticmethod
    def _stream(gen: Generated, api: Any, chat_id: UUID, content: str) -> Any:
        """A streamed reply through the generated client's HTTP session, each event's data parsed into
        the generated model the document names for it."""
        m = gen.models
        body = m.SendMessageRequest(chat_id=chat_id, content=content, stream=True).to_dict()
        events: list[tuple[str, Any]] = []
        http = api.get_httpx_client()
        with http.stream("POST", "/chats/messages/", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            name = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    model = {"delta": m.StreamDelta, "done": m.StreamDone, "error": m.StreamError}[name]
                    events.append((name, model.from_dict(json.loads(line.removeprefix("data: ")))))
        names = [name for name, _ in events]
        assert names[-1] == "done"
        assert set(names[:-1]) == {"delta"}
        done = events[-1][1]
        assert isinstance(done.message, m.MessageOut)
        assert "".join(delta.content for _, delta in events[:-1]) == done.message.content
        return done
