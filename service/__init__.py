"""chatledger's HTTP service: the chat API of api.md on the token ledger of ledger/."""

from __future__ import annotations

__version__ = "0.1.0"
