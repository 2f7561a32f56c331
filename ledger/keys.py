"""Every Redis key name of chatledger, built here and nowhere else.

All keys of one chat carry the hash tag `{c:<chat_id>}` so every chat script touches one Redis Cluster
slot; a config's keys carry `{g:<config_id>}` (design.md section 3). Ids are validated before a key is
built from them, so no client string ever reaches a key name unchecked.
"""

from __future__ import annotations

import re

# Used with fullmatch: `$` would also accept a trailing newline, which would then reach a key name.
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def normalize_uuid(value: str) -> str | None:
    """The canonical lowercase form of a UUID string, or None for anything else (read as not found)."""
    lowered = value.strip().lower()
    return lowered if _UUID_RE.fullmatch(lowered) else None


def _checked_uuid(value: str) -> str:
    if not _UUID_RE.fullmatch(value):
        raise ValueError(f"not a canonical UUID: {value!r}")
    return value


# The suffixes of the exchange scripts' keys after the chat's tag, in their KEYS order: meta, messages,
# deadlines, reservations, journal, context tokens, latest resolutions (the one-key methods of Keyspace,
# in that order).
_EXCHANGE_KEY_SUFFIXES = (":meta", ":msgs", ":res", ":resv", ":journal", ":tok", ":done")
# The exchange keys of this many chats are remembered (two script calls a message build them).
_EXCHANGE_KEYS_CACHED_MAX = 4096


class Keyspace:
    """Key names under one prefix, so several deployments can share a Redis."""

    def __init__(self, prefix: str = "cl") -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must be non-empty and free of hash-tag braces")
        self.prefix = prefix
        self._exchange_keys: dict[str, tuple[str, ...]] = {}

    # --- one chat: a single slot -------------------------------------------------------------------
    def chat_tag(self, chat_id: str) -> str:
        return f"{self.prefix}:{{c:{_checked_uuid(chat_id)}}}"

    def chat_durable_marker(self, chat_id: str) -> str:
        """String, short-lived: written and waited for to confirm the chat's slot is replicated
        (Ledger.confirm_durable)."""
        return f"{self.chat_tag(chat_id)}:durable"

    def chat_meta(self, chat_id: str) -> str:
        """Hash: owner config, counters (limit, used, reserved), flags and copied names."""
        return f"{self.chat_tag(chat_id)}:meta"

    def chat_messages(self, chat_id: str) -> str:
        """Stream: the history, one entry per message, appended in user/AI pairs."""
        return f"{self.chat_tag(chat_id)}:msgs"

    def chat_deadlines(self, chat_id: str) -> str:
        """Sorted set: reservation id -> deadline (open) or forget-time (expired), in server ms, and `~`,
        never due, so the set never empties once it exists."""
        return f"{self.chat_tag(chat_id)}:res"

    def chat_reservations(self, chat_id: str) -> str:
        """Hash: reservation id -> granted milli-tokens while open, or a one-letter resolved state."""
        return f"{self.chat_tag(chat_id)}:resv"

    def chat_journal(self, chat_id: str) -> str:
        """Stream: one entry per balance move (create, reserve, settle, void, expire, top_up), written by
        the script that moves it; the entries' deltas add up to the meta counters exactly."""
        return f"{self.chat_tag(chat_id)}:journal"

    def chat_context_tokens(self, chat_id: str) -> str:
        """String: the token counts of the newest messages, 4 bytes each, oldest first (about
        CONTEXT_TOKENS_KEPT of them; `pack_count` in ledger/lua/_prelude.lua), kept by settle; the meta
        field `ctxlen` is the stream length they were last in step with."""
        return f"{self.chat_tag(chat_id)}:tok"

    def chat_resolved(self, chat_id: str) -> str:
        """String: the chat's latest settled and voided reservations, ';<id>=<s|v>' each, newest last
        (about RESOLVED_BYTES to twice that; `resolve` in ledger/lua/_prelude.lua), so a replayed settle
        or void is recognised after the hold's own records are gone."""
        return f"{self.chat_tag(chat_id)}:done"

    def chat_idempotency(self, chat_id: str, key_digest: str) -> str:
        """String with a TTL: the record of one Idempotency-Key on this chat (design.md section 5)."""
        if not _DIGEST_RE.fullmatch(key_digest):
            raise ValueError("an idempotency key is stored by its hex SHA-256 digest")
        return f"{self.chat_tag(chat_id)}:idem:{key_digest}"

    def chat_idempotency_index(self, chat_id: str) -> str:
        """Sorted set: the digests of this chat's idempotency records, scored by when the record is gone
        for sure (server ms), so an erasure finds every record without a SCAN."""
        return f"{self.chat_tag(chat_id)}:idk"

    def chat_keys(self, chat_id: str) -> list[str]:
        """The keys of the exchange scripts (reserve, settle, void), in their KEYS order: a new list
        the caller may extend. Remembered per chat, since a message's reserve and settle both need them;
        forgotten all at once when too many chats were seen, which only costs a rebuild."""
        keys = self._exchange_keys.get(chat_id)
        if keys is None:
            if len(self._exchange_keys) >= _EXCHANGE_KEYS_CACHED_MAX:
                self._exchange_keys.clear()
            tag = self.chat_tag(chat_id)
            keys = self._exchange_keys[chat_id] = tuple(tag + suffix for suffix in _EXCHANGE_KEY_SUFFIXES)
        return list(keys)

    # --- one config (tenant) ----------------------------------------------------------------------
    def config_tag(self, config_id: str) -> str:
        return f"{self.prefix}:{{g:{_checked_uuid(config_id)}}}"

    def config_record(self, config_id: str) -> str:
        """String: the config, msgspec JSON."""
        return f"{self.config_tag(config_id)}:config"

    def config_chats(self, config_id: str) -> str:
        """Sorted set: every chat id of the config scored by creation time in microseconds."""
        return f"{self.config_tag(config_id)}:chats"

    def config_live_chats(self, config_id: str) -> str:
        """Sorted set: the config's chats that are not deleted, scored like config_chats."""
        return f"{self.config_tag(config_id)}:live"

    def config_deleted_chats(self, config_id: str) -> str:
        """Sorted set: the config's soft-deleted chats scored by their deletion time in ms, which the
        retention pass reads oldest first."""
        return f"{self.config_tag(config_id)}:deleted"

    def config_deleted_backfill(self, config_id: str) -> str:
        """String: how far the retention pass's backfill of the `deleted` index has read the config's
        all-chats index ('<score> <chat id>' of the last chat read), or 'done' (design.md section 12)."""
        return f"{self.config_tag(config_id)}:backfill"

    def config_api_keys(self, config_id: str) -> str:
        """Hash: key id -> key description (prefix, creation time, digest); never the key itself."""
        return f"{self.config_tag(config_id)}:keys"

    # --- global -----------------------------------------------------------------------------------
    def api_key(self, digest: str) -> str:
        """String: config id for the SHA-256 digest of an API key."""
        if not _DIGEST_RE.fullmatch(digest):
            raise ValueError("an API key is looked up by its hex SHA-256 digest")
        return f"{self.prefix}:apikey:{digest}"

    def api_key_rate(self, digest: str) -> str:
        """String with a TTL: the rate limiter's state (theoretical arrival time, us) for one API key."""
        if not _DIGEST_RE.fullmatch(digest):
            raise ValueError("an API key is looked up by its hex SHA-256 digest")
        return f"{self.prefix}:{{k:{digest}}}:rate"

    def retention_turn(self) -> str:
        """String with a TTL: held by the worker whose turn it is to run the retention pass."""
        return f"{self.prefix}:retention"

    def retention_backfill(self) -> str:
        """String: the configs cursor of the backfill of the `deleted` indexes, or 'done' once every
        config's is (design.md section 12)."""
        return f"{self.prefix}:retention:backfill"

    def configs(self) -> str:
        """Set: every config id (the admin listing and the demo bootstrap read it)."""
        return f"{self.prefix}:configs"
