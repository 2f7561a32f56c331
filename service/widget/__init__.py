"""The chat widget's server side: the key it holds, the tickets it hands out, its files.

The browser never sees an API key. The widget routes (service/handlers/widget_proxy.py) call the ledger with a
key held here, from CHATLEDGER_WIDGET_API_KEY or, on the embedded default, the demo config's key. What
the browser holds instead is a *ticket*: a chat id and a MAC over it, keyed by a secret derived from that
API key. So the widget routes reach only the chats they created, not every chat of the key's config (an
operator's backend may share the config), and a chat id learnt elsewhere opens nothing. Rotating the
key ends every ticket at once; the widget then offers a new chat.

The static files (widget.js, demo.html) live beside this module and ship in the wheel as package data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from importlib.resources import files

import msgspec

import ledger
from service.settings import Settings

# 128 bits of MAC: forging a ticket is as hard as guessing a second UUID4.
_MAC_BYTES = 16
_SECRET_CONTEXT = b"chatledger widget ticket v1\x00"


class Asset(msgspec.Struct, frozen=True, kw_only=True):
    """A static file read once at import, with the ETag that lets browsers revalidate it cheaply."""

    body: bytes
    content_type: str
    etag: str


def _asset(name: str, content_type: str) -> Asset:
    body = files("service").joinpath(f"widget/{name}").read_bytes()
    return Asset(body=body, content_type=content_type, etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"')


SCRIPT = _asset("widget.js", "text/javascript")
DEMO_PAGE = _asset("demo.html", "text/html")


class Widget:
    """The widget's key, the budget of the chats it creates, and its ticket signer."""

    def __init__(self, api_key: str, token_limit_milli: int) -> None:
        self.api_key = api_key
        self.token_limit_milli = token_limit_milli
        self._secret = hashlib.sha256(_SECRET_CONTEXT + api_key.encode()).digest()

    def ticket(self, chat_id: str) -> str:
        """What the browser keeps for a chat this widget created: `<chat id>.<MAC>`."""
        return f"{chat_id}.{self._mac(chat_id)}"

    def chat_id(self, ticket: str) -> str:
        """The chat a ticket names. A malformed or forged ticket reads as an unknown chat (404), the
        same answer as a missing one, so a probe learns nothing."""
        raw_id, _, mac = ticket.partition(".")
        chat_id = ledger.normalize_uuid(raw_id)
        if chat_id is None or not hmac.compare_digest(mac.encode(), self._mac(chat_id).encode()):
            raise ledger.ChatNotFound()
        return chat_id

    def _mac(self, chat_id: str) -> str:
        digest = hmac.new(self._secret, chat_id.encode(), hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def widget_from_settings(settings: Settings, demo_api_key: str | None) -> Widget | None:
    """The widget a server runs, or None when it has no key (its routes then answer 404).

    CHATLEDGER_WIDGET_API_KEY wins. Without it, only the embedded default turns the widget on, with the
    demo key: that store lives in one process and exists to be tried, so `make run` shows a working
    demo page. A real deployment names its key on purpose."""
    api_key = settings.widget_api_key or (demo_api_key if settings.embedded else None)
    if not api_key:
        return None
    return Widget(api_key, ledger.to_milli(settings.widget_token_limit, positive=True))
