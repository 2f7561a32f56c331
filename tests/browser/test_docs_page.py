"""GET /docs in headless Chromium: Swagger UI renders the API from chatledger's own files, with no
request to any other origin and no Content-Security-Policy violation."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, expect

from tests.browser.conftest import Served, screenshot

pytestmark = pytest.mark.browser


class TestDocsPage:
    """The reference page works offline: every file it loads comes from chatledger itself."""

    def test_renders_from_this_server_only(self, page: Page, demo_server: Served) -> None:
        """The page shows the document's operations; every request stays on chatledger's origin, and
        the browser reports no policy violation."""
        origin = urlsplit(demo_server.url).netloc
        requests: list[str] = []
        console: list[str] = []

        def on_request(request: Request) -> None:
            requests.append(request.url)

        def on_console(message: ConsoleMessage) -> None:
            console.append(f"{message.type}: {message.text}")

        page.on("request", on_request)
        page.on("console", on_console)
        response = page.goto(f"{demo_server.url}/docs")
        assert response is not None
        assert response.status == 200
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        # Swagger UI lists each operation by its path; the contract's message route is one of them.
        expect(page.get_by_text("/chats/messages/", exact=True).first).to_be_visible(timeout=15_000)
        expect(page.locator(".opblock").first).to_be_visible()
        screenshot(page, "docs-page")
        outside = [url for url in requests if urlsplit(url).scheme in ("http", "https")
                   and urlsplit(url).netloc != origin]  # fmt: skip
        assert outside == []
        assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in requests)
        assert any(url.endswith("/openapi.json") for url in requests)
        violations = [line for line in console if "Content Security Policy" in line or "Refused" in line]
        assert violations == []
        assert page.locator(".opblock").count() >= 20
