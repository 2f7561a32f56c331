"""The chat widget in a real browser: real `chatledger serve` processes, Debian's Chromium,
driven by Playwright.

Playwright runs the system's browser (/usr/bin/chromium, or CHATLEDGER_CHROMIUM): the machines that run
these tests cannot download browsers, so `playwright install` is never used, and a missing Chromium
fails the run with the command that installs it (.ci/run does). Two servers play the two deployments:

- `demo_server`: the embedded default as `make run` starts it, where the widget uses the demo key;
- `operator_server`: a real redis-server with CHATLEDGER_WIDGET_API_KEY, a small budget per chat, and
  CORS for a shop page of another origin (`host_site`) that embeds the widget with its one script tag.

Screenshots and the servers' logs go to tests/browser/artifacts/ (or CHATLEDGER_BROWSER_ARTIFACTS); the
run's summary prints where.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

import ledger
from tests.redis_servers import RedisServer

ARTIFACTS = Path(os.environ.get("CHATLEDGER_BROWSER_ARTIFACTS") or Path(__file__).parent / "artifacts")
# Headless, and nothing that reaches past the loopback (updates, sync, field trials, QUIC probes).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SERVER_START_S = 30
# The operator's budget per widget chat: one short exchange fits, a second does not (tokens).
OPERATOR_TOKEN_LIMIT = 60


def chromium_path() -> str:
    path = os.environ.get("CHATLEDGER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("Chromium is not installed: apt-get install chromium (.ci/run installs it)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def screenshot(page: Page, name: str) -> Path:
    """Save the page as ARTIFACTS/<name>.png, for a person to look at after the run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


class Served:
    """A running `chatledger serve`: its URL, the key its widget holds, and its widget config."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url, self.api_key = url, api_key
        self.config: dict[str, Any] = get_json(f"{url}/widget/api/config")


@contextmanager
def serve(name: str, env_extra: dict[str, str], api_key: str) -> Iterator[Served]:
    """Start `chatledger serve` on a free loopback port, wait for /healthz, stop it afterwards.
    Its log goes to a file (a pipe nobody reads would fill and stall the server)."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATLEDGER_", "REDIS_URL", "REDIS_CLUSTER_URL"))
    }
    env.update(CHATLEDGER_LOG_FORMAT="json", **env_extra)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / f"{name}-server.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(process, url, log.name)
            yield Served(url, api_key)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log_path: str) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"chatledger serve exited with {process.returncode}; see {log_path}")
        try:
            get_json(f"{url}/healthz")
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"chatledger serve did not answer within {SERVER_START_S} s; see {log_path}")


@pytest.fixture(scope="module")
def demo_server() -> Iterator[Served]:
    """The embedded default (`make run`), its demo key pinned so the tests can look for it."""
    demo_key = "clk_demo_" + secrets.token_urlsafe(24)
    with serve("demo", {"CHATLEDGER_DEMO_API_KEY": demo_key}, demo_key) as served:
        yield served


class HostSite:
    """Another origin's web site (a stdlib server on its own loopback port) that embeds the widget:
    `pages` maps a path to (content type, body)."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, bytes]] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                content_type, body = site.pages.get(self.path, ("text/plain", b"not found"))
                self.send_response(200 if self.path in site.pages else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test output stays quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture(scope="module")
def host_site() -> Iterator[HostSite]:
    site = HostSite()
    site.thread.start()
    try:
        yield site
    finally:
        site.server.shutdown()
        site.server.server_close()
        site.thread.join(timeout=5)


# A light brand colour, on which white text would be unreadable.
OPERATOR_BRANDING: dict[str, Any] = {
    "agent_name": "Shop Assistant", "company_name": "Example Shop", "primary_color": "#FFE066",
    "header_text": "Example Shop help", "welcome_message": "Welcome to Example Shop! Ask about an order.",
    "start_page_title": "Need help?", "start_page_slogan": "Answers about your orders.",
    "chat_first_page_description": "Each chat has a small token budget.", "is_full_width": True,
}  # fmt: skip
LOGO_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" rx="14"'
    b' fill="#3c4043"/><circle cx="32" cy="32" r="16" fill="#FFE066"/></svg>'
)


async def _seed_operator(redis_url: str, logo_url: str) -> str:
    """The operator's config and the key their widget holds, in the test redis-server."""
    client = ledger.connect(redis_url)
    try:
        tenants = ledger.TenantStore(client, ledger.Keyspace("clbrowser"))
        config = await tenants.create_config(**OPERATOR_BRANDING, logo_url=logo_url)
        return (await tenants.issue_key(config.config_id)).api_key
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def operator_server(redis_server: RedisServer, host_site: HostSite) -> Iterator[Served]:
    """A deployment with a real Redis and its own widget key, embedded by `host_site`'s shop page."""
    host_site.pages["/logo.svg"] = ("image/svg+xml", LOGO_SVG)
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        api_key = pool.submit(
            asyncio.run, _seed_operator(redis_server.url, f"{host_site.url}/logo.svg")
        ).result()
    env = {
        "REDIS_URL": redis_server.url, "CHATLEDGER_KEY_PREFIX": "clbrowser",
        "CHATLEDGER_WIDGET_API_KEY": api_key, "CHATLEDGER_WIDGET_TOKEN_LIMIT": str(OPERATOR_TOKEN_LIMIT),
        "CHATLEDGER_CORS_ORIGINS": host_site.url,
    }  # fmt: skip
    with serve("operator", env, api_key) as served:
        # The operator's page: their own content, and the one script tag.
        host_site.pages["/shop.html"] = ("text/html; charset=utf-8", _shop_page(served.url).encode())
        yield served


def _shop_page(chatledger_url: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Example Shop</title><link rel="icon" href="data:,">
<style>body {{ margin: 0; font-family: serif; color: #552200; }} h1 {{ padding: 12px 24px; }}</style></head>
<body><h1>Example Shop</h1>
<script src="{chatledger_url}/widget/widget.js" defer></script>
</body></html>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for the module; each test gets its own context (a fresh profile and storage)."""
    path = chromium_path()
    playwright: Playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context. An uncaught error in the page fails the test."""
    context = browser.new_context(viewport={"width": 900, "height": 760}, locale="en-US")
    context.set_default_timeout(10_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], errors


def pytest_terminal_summary(terminalreporter: Any) -> None:
    shots = sorted(ARTIFACTS.glob("*.png")) if ARTIFACTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"browser test screenshots and server logs: {ARTIFACTS}")
