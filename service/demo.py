"""The demo config of the embedded default, so a newcomer can curl the API the moment it starts."""

from __future__ import annotations

import structlog

import ledger
from service.settings import Settings

log = structlog.get_logger("chatledger")


async def ensure_demo_config(tenants: ledger.TenantStore, settings: Settings) -> str | None:
    """Create a demo config and key when the store has no config yet, print the key and return it
    (the chat widget uses it on the embedded default); None when the store had a config already.

    The key is logged on purpose, at warning level, once: it is the only way to reach a store that
    lives inside this process and dies with it. Request logs never carry keys."""
    if await tenants.list_config_ids():
        return None
    config = await tenants.create_config(
        agent_name="Demo Agent",
        company_name="chatledger demo",
        header_text="chatledger demo",
        welcome_message="Hello! This demo answers with chatledger's offline model, which is not an LLM.",
        chat_first_page_description="Every chat has a token budget, charged exactly for each exchange.",
        start_page_title="chatledger",
        start_page_slogan="AI chat with budgets that add up to the token.",
    )
    issued = await tenants.issue_key(config.config_id, api_key=settings.demo_api_key)
    log.warning(
        "demo_config_created",
        config_id=config.config_id,
        demo_api_key=issued.api_key,
        note="Send it as the X-API-Key header; it lives as long as this process.",
    )
    return issued.api_key
