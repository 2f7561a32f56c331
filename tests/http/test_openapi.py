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
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

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


ServeFactory = Callable[..., dict[str, str]]


@pytest.fixture
def live_service(redis_server: RedisServer, tmp_path: Path) -> Iterator[ServeFactory]:
    """Start `chatledger serve` on the test redis-server, with a tenant, a chat and the given settings;
    every process started is stopped at the end."""
    processes: list[tuple[subprocess.Popen[bytes], IO[str]]] = []

    async def seed(prefix: str) -> tuple[str, str]:
        client = ledger.connect(redis_server.url)
        try:
            keys = ledger.Keyspace(prefix)
            tenants = ledger.TenantStore(client, keys)
            config = await tenants.create_config(agent_name="Fuzz", company_name="Fuzz Inc.")
            issued = await tenants.issue_key(config.config_id)
            started = ledger.Ledger(client, keys)
            await started.start()
            chat = await started.create_chat(config, 10**6)
            return issued.api_key, chat.chat_id
        finally:
            await client.aclose()

    def start(prefix: str, *, admin: bool, widget: bool) -> dict[str, str]:
        api_key, chat_id = asyncio.run(seed(prefix))
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}
        env.update(REDIS_URL=redis_server.url, CHATLEDGER_KEY_PREFIX=prefix, CHATLEDGER_LOG_FORMAT="json",
                   CHATLEDGER_LOG_LEVEL="warning")  # fmt: skip
        if admin:
            env["CHATLEDGER_ADMIN_TOKEN"] = "fuzz-admin"
        if widget:
            env["CHATLEDGER_WIDGET_API_KEY"] = api_key
        log = (tmp_path / f"serve-{prefix}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        processes.append((process, log))
        return {"url": f"http://127.0.0.1:{port}", "api_key": api_key, "chat_id": chat_id}

    yield start
    for process, log in processes:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def run_schemathesis(service: dict[str, str], report_dir: Path) -> subprocess.CompletedProcess[str]:
    """`st run` with every check and every phase, stateful included, on the live service's document."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.http.schemathesis_hooks", "PYTHONPATH": str(root)}
    return subprocess.run(
        [
            st, "run", f"{service['url']}/openapi.json", "--wait-for-schema", "20",
            "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", "15", "--seed", "1", "--no-color",
            "-H", f"X-API-Key: {service['api_key']}", "-H", "Authorization: Bearer fuzz-admin",
            "--report", "ndjson", "--report-ndjson-path", str(report_dir / "report.ndjson"),
        ],
        capture_output=True, text=True, timeout=600, env=env, cwd=root,
    )  # fmt: skip


@pytest.mark.redis
@pytest.mark.slow
class TestSchemathesis:
    """schemathesis runs every check it has (status codes, content types, headers, response schemas,
    positive data accepted, negative data refused, Allow, unsupported methods, auth ignored, use after
    delete, resources available after create), in every phase (examples, coverage, fuzzing, and stateful
    sequences that follow the document's links), on a real `chatledger serve` on a spawned
    redis-server: zero failures."""

    @pytest.mark.parametrize(
        ("admin", "widget"),
        [
            pytest.param(True, False, id="admin-on-widget-off"),
            pytest.param(False, True, id="admin-off-widget-on"),
        ],
    )
    def test_every_check_passes(
        self, live_service: ServeFactory, tmp_path: Path, admin: bool, widget: bool
    ) -> None:
        """Each switchable surface is fuzzed both on (the admin API could revoke the widget's key, so the
        two run apart) and off, where it answers its documented 404."""
        service = live_service(f"clfuzz{int(admin)}{int(widget)}", admin=admin, widget=widget)
        result = run_schemathesis(service, tmp_path)
        summary = result.stdout[result.stdout.find("SUMMARY") :]
        # The summary (operations, cases generated, failures) is the figure the closing note quotes.
        print(summary)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        document = json.loads(urllib.request.urlopen(f"{service['url']}/openapi.json", timeout=10).read())
        operations = sum(len(item) for item in document["paths"].values())
        tested = re.search(r"Tested: (\d+)", summary)
        assert tested, summary
        # Every documented operation was tested: 20 without the admin API, 33 with it.
        assert int(tested[1]) == operations >= 20
        for phase in ("Coverage", "Fuzzing", "Stateful"):
            assert re.search(rf"✅ {phase}", summary), summary
        assert "Failures:" not in summary
