"""The chat widget's types: what its proxy routes (service/handlers/widget_proxy.py) take and answer.

The widget reads the API's own Message and Page objects (service/schemas.py); these are the answers only
it gets, shaped for a browser that holds a ticket instead of an API key.
"""

from __future__ import annotations

import msgspec

import ledger
from service.schemas import branding_of
from service.settings import Settings
from service.widget import Widget


class WidgetConfig(ledger.Branding, kw_only=True, frozen=True):
    """The config's branding (the API's Config object without its ids and dates), and what the
    widget needs to know of this server: each new chat's budget and the longest message."""

    token_limit: float
    max_content_chars: int


class WidgetChat(msgspec.Struct):
    """A widget chat: the ticket the browser keeps, and the balance it shows."""

    ticket: str
    chat_id: str
    token_limit: float
    token_used: float


class WidgetMessageRequest(msgspec.Struct):
    content: str


WIDGET_MESSAGE_DECODER = msgspec.json.Decoder(WidgetMessageRequest)


def widget_config(config: ledger.ConfigRecord, settings: Settings) -> WidgetConfig:
    return WidgetConfig(
        token_limit=settings.widget_token_limit,
        max_content_chars=settings.max_content_chars,
        **branding_of(config),
    )


def widget_chat(widget: Widget, chat: ledger.ChatState) -> WidgetChat:
    return WidgetChat(
        ticket=widget.ticket(chat.chat_id),
        chat_id=chat.chat_id,
        token_limit=ledger.from_milli(chat.limit_milli),
        token_used=ledger.from_milli(chat.used_milli),
    )
