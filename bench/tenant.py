"""The tenant a bench run's messages are sent as: one config, its API key, and chats that never run out."""

from __future__ import annotations

import ledger


async def bench_tenant(
    client: ledger.RedisClient, keys: ledger.Keyspace, chats: int
) -> tuple[str, list[str]]:
    """A config's API key and `chats` chats of 10^12 tokens each."""
    tenants = ledger.TenantStore(client, keys)
    config = await tenants.create_config(agent_name="Bench Agent", company_name="Bench")
    api_key = (await tenants.issue_key(config.config_id)).api_key
    book = ledger.Ledger(client, keys)
    await book.start()
    budget = ledger.to_milli(1e12, positive=True)
    return api_key, [(await book.create_chat(config, budget)).chat_id for _ in range(chats)]
