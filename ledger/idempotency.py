"""Idempotency keys: what the scripts need to recognise a retried request (design.md section 5).

A client's key is never used raw in a key name: its SHA-256 digest is. The fingerprint is a digest of
what the request means (the operation and its decoded body), so the same key with another body is told
apart (422) from a true retry (the stored response, byte for byte, charged once).
"""

from __future__ import annotations

import hashlib
import uuid

import msgspec

# A chat created under an Idempotency-Key gets an id derived from (config, key), so the create script's
# own EXISTS check is the idempotency record; the namespace keeps these ids apart from any other uuid5.
_CHAT_ID_NAMESPACE = uuid.UUID("0f9d2a4e-5c1b-4f3a-9e57-6d2b8c1a7e30")


class IdempotencyKey(msgspec.Struct, frozen=True, kw_only=True):
    digest: str
    fingerprint: str

    @classmethod
    def of(cls, key: str, operation: str, *parts: str) -> IdempotencyKey:
        """The record for `key` on `operation` with the request's meaningful parts."""
        fingerprint = hashlib.sha256("\x1f".join((operation, *parts)).encode()).hexdigest()[:32]
        return cls(digest=hashlib.sha256(key.encode()).hexdigest(), fingerprint=fingerprint)

    def chat_id_for(self, config_id: str) -> str:
        """The id of the chat that `POST /chats/` with this key creates for `config_id`."""
        return str(uuid.uuid5(_CHAT_ID_NAMESPACE, f"{config_id}\n{self.digest}"))
