"""Each config's share of a worker's model calls: at most `model_calls_max` at once, the rest refused.

Every config's messages go to the same model server, over one connection pool per worker. Without a
share, one config that holds hundreds of slow streams takes every connection, and another config's
single message waits behind them for its turn. With it, a config past its share gets an immediate 429
`model_calls_exceeded` with `Retry-After`, before anything is reserved, and the other configs find the
pool as free as their own traffic leaves it.

The share bounds calls to a model server (the `openai` provider). The offline model runs in the
worker itself, on its CPU, which the in-flight cap bounds already (service/admission.py): it has no
share. The share counts exchanges from before their reserve to the end of their reply (a stream holds
its call until its last event), per worker: N workers give a config N times the share. One counter per
config on one event loop: plain ints need no lock. A config's entry is removed when its last call
ends, so the table holds only the configs calling now.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter

import ledger
from service.errors import ApiError

# A refused call is asked to retry this many seconds later: a model call of the config ends meanwhile.
RETRY_AFTER_S = 1


class TooManyModelCalls(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            429,
            "model_calls_exceeded",
            f"This config already has {limit} model calls running on this worker; retry shortly.",
            retry_after_s=RETRY_AFTER_S,
            limit=limit,
        )


class ModelCalls:
    """The model calls each config has running on this worker, against its share."""

    __slots__ = ("default_max", "refused", "running", "shared")

    def __init__(self, default_max: int, refused: Counter, *, shared: bool = True) -> None:
        # The share of a config that does not set `model_calls_max`.
        self.default_max = default_max
        # Whether the model is a server the configs share; an in-worker model has no shares.
        self.shared = shared
        self.running: dict[str, int] = {}
        self.refused = refused

    def limit_of(self, config: ledger.ConfigRecord) -> int:
        return config.model_calls_max or self.default_max

    @contextmanager
    def call(self, config: ledger.ConfigRecord) -> Iterator[None]:
        """Hold one of the config's calls for the block, or raise TooManyModelCalls at once."""
        if not self.shared:
            yield
            return
        config_id, limit = config.config_id, self.limit_of(config)
        running = self.running.get(config_id, 0)
        if running >= limit:
            self.refused.inc()
            raise TooManyModelCalls(limit)
        self.running[config_id] = running + 1
        try:
            yield
        finally:
            left = self.running[config_id] - 1
            if left:
                self.running[config_id] = left
            else:
                del self.running[config_id]
