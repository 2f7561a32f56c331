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
from typing import IO, Any

import pytest

import ledger
from service.app import create_app
from service.openapi import build
from service.settings import Settings
from tests.http.conftest import Api, AppFactory
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


def _document(**settings: Any) -> dict[str, Any]:
    return build(create_app(Settings(redis_url="redis://unused", **settings)))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _property(document: dict[str, Any], schema: str, name: str) -> dict[str, Any]:
    prop: dict[str, Any] = document["components"]["schemas"][schema]["properties"][name]
    return prop


class TestExactDocument:
    """The document states what the server does: shapes, rules, statuses and streams."""

    def test_every_array_has_items(self) -> None:
        """No array schema is left without `items`; a chat's `messages` are MessageOut (always empty)."""
        document = _document(admin_token="x")
        arrays = [node for node in _walk(document) if node.get("type") == "array"]
        assert arrays
        assert [node for node in arrays if "items" not in node] == []
        for schema in ("ChatOut", "AdminChat"):
            messages = _property(document, schema, "messages")
            assert messages["items"] == {"$ref": "#/components/schemas/MessageOut"}
            assert messages["maxItems"] == 0

    def test_rules_a_client_can_break_are_constraints(self) -> None:
        """Amounts, content, cursors and whole numbers carry the bounds the server enforces."""
        document = _document(admin_token="x", max_content_chars=500)
        assert _property(document, "AddTokensRequest", "additional_tokens")["minimum"] == 0.0005
        assert _property(document, "CreateChatRequest", "token_limit")["maximum"] == 10**12
        content = _property(document, "SendMessageRequest", "content")
        assert (content["minLength"], content["maxLength"]) == (1, 500)
        assert re.search(content["pattern"], " \t x")
        assert not re.search(content["pattern"], " \t\n\u3000")
        assert _property(document, "WidgetMessageRequest", "content")["maxLength"] == 500
        assert _property(document, "ConfigCreate", "rate_limit_burst")["type"] == "integer"
        assert _property(document, "ConfigCreate", "prompt_token_weight")["multipleOf"] == 0.001
        history = document["paths"]["/chats/{chat_id}/messages/"]["get"]["parameters"]
        cursors = {p["name"]: p for p in history if p["name"] in ("after", "before", "offset")}
        assert cursors["after"]["schema"]["pattern"] == cursors["before"]["schema"]["pattern"]
        assert all("Use one of offset, after and before" in p["description"] for p in cursors.values())
        assert "x-type" not in json.dumps(document)

    def test_every_status_is_listed(self) -> None:
        """Each kind of route lists the statuses it can answer: auth, bodies, queries, idempotency."""
        paths = _document(admin_token="x")["paths"]

        def statuses(path: str, method: str) -> set[int]:
            return {int(status) for status in paths[path][method]["responses"]}

        assert statuses("/chats/messages/", "post") == {
            200,
            400,
            401,
            402,
            404,
            409,
            413,
            422,
            429,
            502,
            503,
            504,
        }
        assert statuses("/chats/{chat_id}/tokens/", "put") == {200, 400, 401, 404, 409, 413, 422, 429, 503}
        assert statuses("/chats/{chat_id}", "get") == {200, 401, 404, 429, 503}
        assert statuses("/chats/by-config-id", "get") == {200, 401, 404, 422, 429, 503}
        assert statuses("/admin/configs", "get") == {200, 401, 404, 503}
        assert statuses("/admin/chats/{chat_id}/restore", "post") == {200, 401, 404, 409, 503}
        assert statuses("/readyz", "get") == {200, 503}
        retry = paths["/chats/messages/"]["post"]["responses"]["429"]["headers"]
        assert retry["Retry-After"]["required"] is True

    def test_streams_are_event_streams(self) -> None:
        """A streamed reply is text/event-stream, each event's data typed by its event name."""
        document = _document()
        stream = document["paths"]["/chats/messages/"]["post"]["responses"]["200"]["content"]
        assert list(stream) == ["application/json", "text/event-stream"]
        events = {
            event["properties"]["event"]["const"]: event["properties"]["data"]["contentSchema"]["$ref"]
            for event in stream["text/event-stream"]["schema"]["oneOf"]
        }
        assert events == {
            "delta": "#/components/schemas/StreamDelta",
            "done": "#/components/schemas/StreamDone",
            "error": "#/components/schemas/StreamError",
        }

    def test_what_an_answer_always_carries_is_required(self) -> None:
        """A response struct's every field is required, defaults in the record or not (msgspec writes
        them all); MessageOut and Health, which omit their defaults, require only what they always send."""
        schemas = _document(admin_token="x", widget_api_key="k")["components"]["schemas"]
        for name in ("ConfigOut", "AdminConfig", "WidgetConfig", "ChatOut", "AdminChat"):
            schema = schemas[name]
            assert schema["required"] == list(schema["properties"]), name
            assert not [p for p in schema["properties"].values() if "default" in p], name
        assert "primary_color" in schemas["ConfigOut"]["required"]
        assert set(schemas["MessageOut"]["required"]) == {"chat_id", "is_user", "content", "timestamp"}
        assert schemas["Health"]["required"] == ["status"]
        assert schemas["ConfigPatch"]["required"] == []

    def test_the_admin_api_is_documented_only_when_on(self) -> None:
        """Off, the admin API answers 404 everywhere as if it did not exist, and the document agrees."""
        assert not any(path.startswith("/admin/") for path in _document()["paths"])
        assert any(path.startswith("/admin/") for path in _document(admin_token="x")["paths"])


class TestRouting:
    """Allow lists exactly a resource's methods, GET routes answer HEAD, and edge values found by the
    fuzzer are answered as the document says."""

    async def test_allow_lists_the_resources_own_methods(self, api: Api) -> None:
        """A literal path is never taken for a chat id: its 405 lists its own methods only."""
        status, _, headers = await api.call("OPTIONS", "/chats/by-config-id")
        assert (status, headers["Allow"]) == (405, "GET,HEAD")
        status, _, headers = await api.call("GET", "/chats/messages/")
        assert (status, headers["Allow"]) == (405, "POST")
        status, _, headers = await api.call("OPTIONS", "/chats/2b7c3c1e-8a54-4d7b-9a4c-6f1b0f0b8a10")
        assert (status, headers["Allow"]) == (405, "DELETE,GET,HEAD")

    async def test_get_routes_answer_head(self, api: Api) -> None:
        """HEAD answers what GET would, without a body."""
        chat = (await api.create_chat())["chat_id"]
        for path in ("/docs", "/openapi.json", "/healthz", "/chat-config/", f"/chats/{chat}"):
            status, body, headers = await api.call("HEAD", path)
            assert (status, body) == (200, None), path
            assert "X-Request-ID" in headers

    async def test_before_the_first_possible_id(self, api: Api) -> None:
        """`before=0-0` is an empty page, not a failing store (it was a 503)."""
        chat = (await api.create_chat())["chat_id"]
        await api.send(chat)
        status, page, _ = await api.call("GET", f"/chats/{chat}/messages/", params={"before": "0-0"})
        assert (status, page["items"], page["total"]) == (200, [], 2)

    async def test_whole_numbers_written_as_floats(self, make_client: AppFactory) -> None:
        """JSON Schema counts 5.0 as an integer, so the admin API takes it; 5.5 is 422."""
        client = await make_client(admin_token="t")
        headers = {"Authorization": "Bearer t"}
        fields = {"agent_name": "A", "company_name": "B", "rate_limit_burst": 5.0, "max_output_tokens": 64.0}
        async with client.post("/admin/configs", json=fields, headers=headers) as response:
            assert response.status == 200
            config = await response.json()
        assert (config["rate_limit_burst"], config["max_output_tokens"]) == (5, 64)
        async with client.post(
            "/admin/configs", json={**fields, "rate_limit_burst": 5.5}, headers=headers
        ) as bad:
            assert bad.status == 422


class TestDocsPage:
    """/docs is served from what chatledger installs, with a policy that allows this origin only."""

    async def test_page_and_assets_load_from_this_server(self, make_client: AppFactory) -> None:
        """The page names no other origin; it and each of its files carry the policy headers."""
        client = await make_client(base_path="/svc")
        async with client.get("/svc/docs") as response:
            assert response.status == 200
            page = await response.text()
            policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy
        assert "script-src 'self'" in policy
        assert "http://" not in page
        assert "https://" not in page
        assert "<script>" not in page
        assets = re.findall(r'(?:src|href)="(/svc/docs/assets/[^"]+)"', page)
        assert sorted(assets) == ["/svc/docs/assets/docs.js", "/svc/docs/assets/swagger-ui-bundle.js",
                                  "/svc/docs/assets/swagger-ui.css"]  # fmt: skip
        assert 'data-url="/svc/openapi.json"' in page
        for asset in assets:
            async with client.get(asset) as response:
                assert response.status == 200, asset
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.content_type in ("text/javascript", "text/css")
                assert len(await response.read()) > 100
        async with client.get("/svc/docs/assets/docs.js") as response:
            assert "validatorUrl: null" in await response.text()
        async with client.get("/svc/docs/assets/other.js") as response:
            assert response.status == 404


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
            env["CHATLEDGER_ADMIN_TOKEN"] = "fuzz-admin-token-0123"
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
            "-H", f"X-API-Key: {service['api_key']}", "-H", "Authorization: Bearer fuzz-admin-token-0123",
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
        with urllib.request.urlopen(f"{service['url']}/openapi.json", timeout=10) as response:
            document = json.loads(response.read())
        # schemathesis leaves out the document's own route, GET /openapi.json.
        operations = sum(len(item) for item in document["paths"].values()) - 1
        tested = re.search(r"Tested: (\d+)", summary)
        assert tested, summary
        # Every other documented operation was tested: 20 without the admin API, 33 with it.
        assert int(tested[1]) == operations >= 20
        for phase in ("Coverage", "Fuzzing", "Stateful"):
            assert re.search(rf"✅ {phase}", summary), summary
        assert "Failures:" not in summary
