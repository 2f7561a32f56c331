"""Bounds, TTLs and deadlines of the ledger, in one place, units last in every name."""

from __future__ import annotations

import msgspec

# One token is 1000 milli-tokens: the API's floats are kept exactly to 3 decimals (design.md section 2).
MILLI_PER_TOKEN = 1000

# The API refuses amounts above 10^12 tokens (api.md Part B 4). In milli-tokens that is 10^15, below 2^53,
# so every balance stays exact in Lua's doubles; the assertion keeps it so if someone raises the bound.
AMOUNT_TOKENS_MAX = 10**12
AMOUNT_MILLI_MAX = AMOUNT_TOKENS_MAX * MILLI_PER_TOKEN
assert AMOUNT_MILLI_MAX < 2**53, "balances must stay exact in Lua doubles"

# Token weights are kept to milli precision too, so `tokens * weight_milli` is an exact integer charge.
WEIGHT_MILLI_MAX = 1_000_000

# How many due reservations one script call reaps at most: bounds the work any single request does.
REAP_BATCH_MAX = 256

# Idempotency records one erase_chat.lua call removes at most: bounds how long one erasure blocks Redis;
# a chat with more (a day of keyed requests) takes several calls.
ERASE_RECORDS_MAX = 1000

# Chats a config's erasure, the retention pass and an export read from an index at a time: bounds the
# worker's memory and each command whatever the config's size.
CHATS_BATCH = 100

# A chat's journal keeps at least this many newest entries one by one; once it holds JOURNAL_FOLD_BATCH
# more, all older ones are folded into its checkpoint (ledger/lua/_prelude.lua), so the journal's memory
# is bounded per chat (a listpack of at most a few KB) while its sums stay exact.
JOURNAL_KEPT = 16
JOURNAL_FOLD_BATCH = 32

# Bytes of a chat's latest settled and voided hold ids kept (14 ids at least, in a string of their own:
# Keyspace.chat_resolved) so a replayed settle or void is recognised; the holds' own records go when
# they are resolved.
RESOLVED_BYTES = 512

# Entries skipped per XRANGE call when history.lua walks to an offset: bounds the Lua memory of a deep page.
HISTORY_SKIP_CHUNK = 500

# Token counts of a chat's newest messages kept packed by settle (Keyspace.chat_context_tokens), so a
# reserve prices the context without reading the messages into Lua. A context of more messages than
# this (CHATLEDGER_HISTORY_MESSAGES) is priced from the stream itself, more slowly.
CONTEXT_TOKENS_KEPT = 128
# The counts may grow this far past CONTEXT_TOKENS_KEPT before settle trims it back, so a message does
# not pay for a trim every time.
CONTEXT_TOKENS_SLACK = 32

# A hold cut to a share of a scarce budget (LedgerLimits.hold_shares) still asks for at least this many
# reply tokens, when the chat can pay them: a share of a nearly spent chat would otherwise cut replies
# to a token or two while other holds are about to give tokens back.
HOLD_REPLY_FLOOR_TOKENS = 64

# A worker's cache of its chats' newest messages (ledger/context.py): at most this many chats and this
# many characters of content (a few tens of MB at most), least recently used first out.
CONTEXT_CACHE_CHATS_MAX = 4096
CONTEXT_CACHE_CHARS_MAX = 8_000_000


class LedgerLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Deadlines the operator may tune; the defaults fit an upstream timeout of 60 s."""

    # A reservation outlives the longest model call, so only a dead worker's hold ever expires
    # (design.md section 4): keep it above the provider's total timeout.
    reservation_ttl_ms: int = 120_000
    # A resolved reservation is remembered this long, so a replayed settle or void is recognised and
    # changes nothing instead of charging twice.
    reservation_retention_ms: int = 3_600_000
    # An Idempotency-Key's record on a chat (messages, top-ups) is kept this long (design.md section 5).
    idempotency_ttl_ms: int = 24 * 3_600_000
    # A by-config index entry whose chat does not exist is only repaired when older than this: younger
    # ones may belong to a creation in progress (the index is written first, design.md section 3).
    orphan_grace_ms: int = 60_000
    # A hold's reply part is at most 1/hold_shares of the reply tokens the chat has free (and at least
    # HOLD_REPLY_FLOOR_TOKENS of them, and never more than the reply may ask for), so that many
    # concurrent exchanges of one chat can hold at once; 1 lets one hold take everything free.
    hold_shares: int = 1

    def __post_init__(self) -> None:
        if self.hold_shares < 1:
            raise ValueError("hold_shares must be at least 1")
