"""The chat widget as a visitor uses it, in headless Chromium against a running chatledger."""

from __future__ import annotations

import math
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, Response, expect

from tests.browser.conftest import OPERATOR_TOKEN_LIMIT, HostSite, Served, get_json, screenshot

pytestmark = pytest.mark.browser

# Records every earlier state of the message texts as they change: each streamed delta appended to
# the reply is one change, whose old value is the reply so far.
RECORD_REPLY_STEPS = """host => {
  const log = host.shadowRoot.querySelector('.clw-log');
  window.__clwSteps = [];
  new MutationObserver(records => {
    for (const record of records) window.__clwSteps.push(record.oldValue);
  }).observe(log, {characterData: true, characterDataOldValue: true, subtree: true});
}"""
SCRIPT_MESSAGE = '<script>window.__clwPwned = 1</script><img src=x onerror="window.__clwPwned = 2"> hi'


def widget(page: Page) -> Locator:
    return page.locator(".clw")


def start_chat(page: Page) -> None:
    page.get_by_role("button", name="Start chat").click()
    expect(page.locator(".clw-input")).to_be_focused()


def send(page: Page, text: str) -> Response:
    """Type and send a message; answers the POST's response once the reply is complete."""
    page.locator(".clw-input").fill(text)
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/messages/")) as sent:
        page.locator(".clw-input").press("Enter")
    expect(page.locator(".clw-msg--pending")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    return sent.value


def bubbles(page: Page) -> list[tuple[bool, str]]:
    """(is the visitor's, text) of every message shown, the welcome message included."""
    items: list[tuple[bool, str]] = []
    for bubble in page.locator(".clw-msg").all():
        is_user = "clw-msg--user" in (bubble.get_attribute("class") or "")
        items.append((is_user, bubble.locator(".clw-text").text_content() or ""))
    return items


def chat_balance(page: Page, server: Served) -> tuple[float, float]:
    """The chat's limit and use as the server has them, through the ticket the page kept."""
    ticket = page.evaluate("() => Object.values(window.localStorage)[0]")
    chat = get_json(f"{server.url}/widget/api/chats/{ticket}")
    return chat["token_limit"], chat["token_used"]


def budget_text(left: float, limit: float) -> str:
    return f"{math.floor(left):,} of {math.floor(limit):,} tokens left"


class TestDemoPage:
    """The embedded default's demo page, /widget/, where the widget holds the demo key."""

    def test_the_start_page_shows_the_config(self, page: Page, demo_server: Served) -> None:
        """Title, slogan and description of the config, in its primary colour with readable white
        text, boxed (is_full_width is false), inside a labelled region."""
        config = demo_server.config
        page.goto(f"{demo_server.url}/widget/")
        expect(page.get_by_role("heading", name=config["start_page_title"], exact=True)).to_be_visible()
        expect(widget(page)).to_contain_text(config["start_page_slogan"])
        expect(widget(page)).to_contain_text(config["chat_first_page_description"])
        expect(page.get_by_role("region", name=f"{config['header_text']} chat")).to_be_visible()
        header = page.locator(".clw-header")
        expect(header).to_have_css("background-color", "rgb(26, 115, 232)")  # #1A73E8
        expect(header).to_have_css("color", "rgb(255, 255, 255)")
        expect(page.get_by_role("button", name="Start chat")).to_have_css(
            "background-color", "rgb(26, 115, 232)"
        )
        box = widget(page).bounding_box()
        assert box is not None
        assert box["width"] <= 420
        screenshot(page, "demo-start-page")

    def test_a_message_streams_its_reply_by_keyboard_alone(self, page: Page, demo_server: Served) -> None:
        """Tab and Enter start a chat, Enter sends; the reply is asked for as Server-Sent Events and
        grows delta by delta into the saved message; the budget shows what the server charged."""
        page.goto(f"{demo_server.url}/widget/")
        start = page.get_by_role("button", name="Start chat")
        expect(start).to_be_visible()
        page.keyboard.press("Tab")
        expect(start).to_be_focused()
        page.keyboard.press("Enter")
        message_box = page.get_by_label("Message to Demo Agent")
        expect(message_box).to_be_focused()
        expect(page.locator(".clw-msg .clw-text").first).to_have_text(demo_server.config["welcome_message"])
        page.locator(".chatledger-widget, #chat").first.evaluate(RECORD_REPLY_STEPS)
        page.keyboard.type("What does a token budget do?")
        with page.expect_response(lambda r: r.request.method == "POST" and "/messages/" in r.url) as sent:
            page.keyboard.press("Enter")
        expect(page.locator(".clw-msg--pending")).to_have_count(0)
        response = sent.value
        assert response.request.headers["accept"] == "text/event-stream"
        assert response.headers["content-type"].startswith("text/event-stream")
        reply = page.locator(".clw-msg--ai .clw-text").last
        expect(reply).to_contain_text("You wrote 7 tokens")
        final = reply.text_content() or ""
        steps: list[str] = page.evaluate("() => window.__clwSteps")
        assert len(set(steps)) > 10, steps
        assert all(final.startswith(step) for step in steps)
        limit, used = chat_balance(page, demo_server)
        assert used > 0
        expect(page.locator(".clw-budget")).to_have_text(budget_text(limit - used, limit))
        expect(page.get_by_role("log", name="Conversation with Demo Agent")).to_have_attribute(
            "aria-live", "polite"
        )
        screenshot(page, "demo-reply")

    def test_a_reload_restores_the_chat(self, page: Page, demo_server: Served) -> None:
        """The chat's ticket stays in localStorage; after a reload the history and the budget come
        back from the server, and the chat goes on."""
        page.goto(f"{demo_server.url}/widget/")
        start_chat(page)
        send(page, "First question")
        send(page, "Second question")
        before = bubbles(page)
        assert [is_user for is_user, _ in before] == [False, True, False, True, False]
        budget = page.locator(".clw-budget").text_content()
        page.reload()
        expect(page.locator(".clw-msg")).to_have_count(5)
        assert bubbles(page) == before
        expect(page.locator(".clw-budget")).to_have_text(budget or "")
        send(page, "Third question")
        expect(page.locator(".clw-msg--ai .clw-text").last).to_contain_text("4 earlier messages")
        screenshot(page, "demo-after-reload")

    def test_a_ticket_the_server_does_not_know_starts_over(self, page: Page, demo_server: Served) -> None:
        """A kept ticket that opens no chat (deleted, forged, or the key rotated) is forgotten, and
        the start page is shown with no error."""
        page.goto(f"{demo_server.url}/widget/")
        start_chat(page)
        page.evaluate("() => { for (const k of Object.keys(localStorage)) localStorage.setItem(k, 'x.y'); }")
        page.reload()
        expect(page.get_by_role("button", name="Start chat")).to_be_visible()
        expect(page.locator(".clw-alert")).to_be_empty()
        assert page.evaluate("() => localStorage.length") == 0

    def test_markup_in_a_message_is_shown_as_text(self, page: Page, demo_server: Served) -> None:
        """A message with a <script> and an <img onerror> is shown character for character, as it
        streams and from the history after a reload; no element is made and no script runs."""
        page.goto(f"{demo_server.url}/widget/")
        start_chat(page)
        send(page, SCRIPT_MESSAGE)
        for _ in range(2):
            expect(page.locator(".clw-msg--user .clw-text")).to_have_text(SCRIPT_MESSAGE)
            expect(page.locator(".clw-log script, .clw-log img")).to_have_count(0)
            assert page.evaluate("() => window.__clwPwned") is None
            page.reload()
        screenshot(page, "demo-script-as-text")

    def test_the_api_key_never_reaches_the_browser(self, page: Page, demo_server: Served) -> None:
        """No request carries an API key, and no response, page or storage holds the demo key."""
        responses: list[Response] = []
        page.on("response", lambda response: responses.append(response))
        page.goto(f"{demo_server.url}/widget/")
        start_chat(page)
        send(page, "Is the key safe?")
        assert len(responses) >= 5
        for response in responses:
            assert "x-api-key" not in response.request.all_headers()
            assert demo_server.api_key.encode() not in response.body(), response.url
        stored: dict[str, Any] = page.evaluate("() => ({...window.localStorage})")
        assert demo_server.api_key not in repr(stored) + page.content()
        assert [value.count(".") for value in stored.values()] == [1]  # a ticket: `<chat id>.<MAC>`


class TestOperatorDeployment:
    """A shop page of another origin embeds the widget of a chatledger on a real Redis, whose widget
    key is a setting and whose chats get a small budget."""

    def test_one_script_tag_on_another_origin(
        self, page: Page, operator_server: Served, host_site: HostSite
    ) -> None:
        """The shop page's one script tag renders the start page with the logo, full width, with
        black text on the light primary colour; a message streams across origins (CORS)."""
        page.goto(f"{host_site.url}/shop.html")
        expect(page.get_by_role("heading", name="Need help?", exact=True)).to_be_visible()
        header = page.locator(".clw-header")
        expect(header).to_have_css("background-color", "rgb(255, 224, 102)")  # #FFE066
        expect(header).to_have_css("color", "rgb(0, 0, 0)")
        logo = page.locator(".clw-start .clw-logo")
        expect(logo).to_have_attribute("alt", "Example Shop logo")
        assert logo.evaluate("img => img.complete && img.naturalWidth > 0")
        frame, viewport = widget(page).bounding_box(), page.viewport_size
        assert frame is not None
        assert viewport is not None
        assert frame["width"] == viewport["width"]
        screenshot(page, "operator-start-page")
        start_chat(page)
        send(page, "Where is my order?")
        expect(page.locator(".clw-msg--ai .clw-text").last).to_contain_text("Where is my order?")
        limit, used = chat_balance(page, operator_server)
        assert limit == OPERATOR_TOKEN_LIMIT
        expect(page.locator(".clw-budget")).to_have_text(budget_text(limit - used, limit))

    def test_a_chat_out_of_tokens_says_so(
        self, page: Page, operator_server: Served, host_site: HostSite
    ) -> None:
        """When the chat cannot pay for the next message, the server's 402 becomes a clear alert; the
        message stays in the box to shorten or keep, and nothing else is shown or charged."""
        page.goto(f"{host_site.url}/shop.html")
        start_chat(page)
        send(page, "hi")
        charged = chat_balance(page, operator_server)
        response = send(page, "And what about my second order?")
        assert response.status == 402
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("This chat is out of tokens")
        expect(page.locator(".clw-input")).to_have_value("And what about my second order?")
        assert [is_user for is_user, _ in bubbles(page)] == [False, True, False]
        assert chat_balance(page, operator_server) == charged
        limit, used = charged
        expect(page.locator(".clw-budget")).to_have_text(budget_text(limit - used, limit))
        screenshot(page, "operator-out-of-tokens")
