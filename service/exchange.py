"""One message exchange: reserve -> model -> settle, or void on failure (design.md section 4).

Two Redis round trips on the hot path: the reserve (which also returns the priced context) and the
settle (which charges and appends both messages atomically). Any failure between them voids the hold,
so nothing is charged and nothing is written; a worker that dies instead leaves a hold that the next
reserve on the chat reclaims after its deadline.
"""

from __future__ import annotations

import asyncio

import structlog

import ledger
from service.providers import ChatTurn, Completion, CompletionRequest, Provider
from service.settings import Settings

log = structlog.get_logger(__name__)


class Exchange:
    def __init__(self, ledger_: ledger.Ledger, provider: Provider, settings: Settings) -> None:
        self._ledger = ledger_
        self._provider = provider
        self._settings = settings

    async def send(self, config: ledger.ConfigRecord, chat_id: str, content: str) -> ledger.Settlement:
        """Save `content` and the model's reply to the chat and charge the exchange, or raise."""
        user_tokens = self._provider.count_tokens(content)
        reservation = await self._ledger.reserve(
            config,
            chat_id,
            prompt_tokens=self._provider.count_tokens(config.system_prompt) + user_tokens,
            completion_tokens_max=config.max_output_tokens or self._settings.max_output_tokens,
            history_tokens_max=self._settings.history_tokens,
            history_count_max=self._settings.history_messages,
        )
        try:
            completion = await self._provider.complete(
                CompletionRequest(
                    system_prompt=config.system_prompt,
                    context=[ChatTurn(m.is_user, m.content) for m in reservation.context],
                    user_content=content,
                    max_tokens=reservation.completion_tokens_max,
                    model=config.model,
                )
            )
        except BaseException:
            # Shielded: a cancelled request must still give its hold back.
            await asyncio.shield(self._void(reservation))
            raise
        return await self._ledger.settle(
            reservation,
            charge_milli=charge_milli(config, completion),
            user_content=content,
            user_tokens=user_tokens,
            reply_content=completion.content,
            reply_tokens=completion.completion_tokens,
            flags=("t" if completion.truncated else "") + ("e" if completion.estimated else ""),
        )

    async def _void(self, reservation: ledger.Reservation) -> None:
        try:
            await self._ledger.void(reservation)
        except ledger.LedgerError as exc:
            # The hold stays until its deadline, when the next reserve reclaims it: nothing is lost.
            log.warning("void_failed", chat_id=reservation.chat_id, code=exc.code)


def charge_milli(config: ledger.ConfigRecord, completion: Completion) -> int:
    """The exchange's cost: each side's tokens times its weight, exact in milli-tokens (design.md 2)."""
    return (
        completion.prompt_tokens * config.prompt_weight_milli
        + completion.completion_tokens * config.completion_weight_milli
    )
