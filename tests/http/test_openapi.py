"""GET /openapi.json: generated from the routes and types, and fuzzed by schemathesis on a running
service (a real `chatledger serve` on a spawned redis-server): no 500s, every answer as documented."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ledger
from service.app import create_app
from service.openapi import build
from service.settings import Settings
from tests.redis_servers import RedisServer

CONTRACT = {
    ("get", "/chat-config/"), ("post", "/chats/"), ("post", "/chats/messages/"),
    ("get", "/chats/{chat_id}/messages/"), ("put", "/chats/{chat_id}/tokens/"),
    ("get", "/chats/by-config-id"), ("delete", "/chats/{chat_id}"),
}  # fmt: skip


class TestDocument:
    def test_every_route_is_documented_once(self) -> None:
        """Every routed operation is in the document (one slash form), the contract's seven included,
        and every schema reference resolves."""
        document = build(create_app(Settings(redis_url="redis://unused", admin_token="x")))
        operations = {(m, p) for p, item in document["paths"].items() for m in item}
        assert operations >= CONTRACT
        assert ("get", "/admin/chats/{chat_id}/journal") in operations
        assert not any(p.rstrip("/") + "/" in document["paths"] and p.rstrip("/") in document["paths"]
                       for p in document["paths"] if p != "/")  # fmt: skip
        text = json.dumps(document)
        for ref in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
            assert ref in document["components"]["schemas"], ref
        assert document["openapi"] == "3.1.0"

    def test_base_path_prefixes_every_path(self) -> None:
        """Under a base path, the document lists the mounted paths."""
        document = build(create_app(Settings(redis_url="redis://unused", base_path="/svc")))
        assert all(path.startswith("/svc/") for path in document["paths"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def live_service(redis_server: RedisServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`chatledger serve` on the test redis-server, with a tenant, a chat and an admin token."""

    async def seed() -> tuple[str, str]:
        client = ledger.connect(redis_server.url)
        try:
            await client.flushall()
            keys = ledger.Keyspace("clfuzz")
            tenants = ledger.TenantStore(client, keys)
            config = await tenants.create_config(agent_name="Fuzz", company_name="Fuzz Inc.")
            issued = await tenants.issue_key(config.config_id)
            started = ledger.Ledger(client, keys)
            await started.start()
            chat = await started.create_chat(config, 10**6)
            return issued.api_key, chat.chat_id
        finally:
            await client.aclose()

    api_key, chat_id = asyncio.run(seed())
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}
    env.update(
        REDIS_URL=redis_server.url, CHATLEDGER_KEY_PREFIX="clfuzz",
        CHATLEDGER_ADMIN_TOKEN="fuzz-admin-token-0123",
        CHATLEDGER_LOG_FORMAT="json", CHATLEDGER_LOG_LEVEL="warning",
    )  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "api_key": api_key,
            "chat_id": chat_id,
            "log": str(log.name),
        }
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


@pytest.mark.redis
@pytest.mark.slow
class TestSchemathesis:
    def test_no_server_errors_and_every_answer_as_documented(
        self, live_service: dict[str, str], tmp_path: Path
    ) -> None:
        """schemathesis fuzzes every operation (bounded examples): zero 500s, every status, content type,
        header and body as the document says."""
        st = shutil.which("st", path=str(Path(sys.executable).parent))
        assert st is not None, "schemathesis is a dev dependency"
        report = tmp_path / "report.json"
        result = subprocess.run(
            [
                st, "run", f"{live_service['url']}/openapi.json", "--wait-for-schema", "20",
                "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance,response_headers_conformance",
                "--max-examples", "12", "--seed", "1", "--no-color",
                "-H", f"X-API-Key: {live_service['api_key']}",
                "-H", "Authorization: Bearer fuzz-admin-token-0123",
                "--report", "ndjson", "--report-ndjson-path", str(report),
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        # The summary (operations, cases generated, failures) is the figure the closing note quotes.
        print(result.stdout[result.stdout.find("SUMMARY") :])
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]
        counts = re.search(r"Tested: (\d+).*?(\d+) generated", result.stdout, re.S)
        assert counts, result.stdout[-1500:]
        assert int(counts[1]) >= 25
