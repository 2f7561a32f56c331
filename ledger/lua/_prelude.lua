-- Shared helpers, prepended to every script by ledger/scripts.py (Redis scripts cannot include each
-- other). scripts.py also prepends the constants shared with Python (REAP_BATCH_MAX and the other
-- bounds of ledger/limits.py, the CONTEXT_* modes), so each has one source. Only definitions here:
-- nothing runs at load.

-- Milliseconds on the Redis server's clock. Deadlines use this clock only, so workers whose clocks
-- disagree still agree on when a reservation expires (design.md section 4).
-- Arithmetic converts the digits itself: tonumber() would parse each string twice.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- Amounts stay below 2^53 (ledger/limits.py), so Lua doubles hold them exactly, and '%d' (a C long
-- here) writes them without an exponent, which Redis's own number-to-argument conversion ('%.17g')
-- does not promise. '%d' rather than '%.0f', which glibc formats with multi-precision arithmetic.
-- Zero, the commonest journal delta, is not formatted at all.
local function int(n)
  if n == 0 then
    return '0'
  end
  return string.format('%d', n)
end

-- Reservation states in the reservations hash: an open hold stores its granted milli-tokens as digits;
-- a resolved one stores a letter and stays until its retention ends, so a replayed settle or void is
-- recognised and changes nothing.
local SETTLED, VOIDED, EXPIRED = 's', 'v', 'e'

-- A chat's newest token counts are kept packed in one string, 4 bytes (big-endian) a message, oldest
-- first: settle appends with APPEND, reserve reads the newest with one GETRANGE, and reading a count
-- back needs no tonumber. A message's count stays far below 2^32: the request body is at most 1 MB.
local function pack_count(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

local function unpack_count(packed, at)
  local b1, b2, b3, b4 = string.byte(packed, at, at + 3)
  return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end

-- Every count of a packed string, newest first. struct (on a real Redis) reads them all in one call
-- rather than a call per count.
local function unpack_counts_newest_first(packed)
  local n = #packed / 4
  local newest = {}
  if struct then
    local oldest = {struct.unpack('>' .. string.rep('I4', n), packed)}
    for i = 1, n do
      newest[i] = oldest[n + 1 - i]
    end
  else
    for i = 1, n do
      newest[i] = unpack_count(packed, 4 * (n - i) + 1)
    end
  end
  return newest
end

-- The numeric arguments of reserve and settle come packed in one argument, 8 bytes each, big-endian
-- unsigned (ledger/packing.py): one argument instead of a dozen, and no digits for strtod to parse
-- (twice in tonumber()). `format` is struct's ('>I8I8...', one I8 per number); the embedded Redis
-- (fakeredis) has no struct library, and reads the bytes itself.
local function unpack_numbers(format, packed)
  if struct then
    return struct.unpack(format, packed)
  end
  local numbers = {}
  for at = 1, #packed, 8 do
    local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(packed, at, at + 7)
    numbers[#numbers + 1] = ((((((b1 * 256 + b2) * 256 + b3) * 256 + b4) * 256 + b5) * 256 + b6) * 256
      + b7) * 256 + b8
  end
  return unpack(numbers)
end

-- The `due` of a chat whose deadlines set is empty: after every deadline (2^53 - 1 ms).
local NEVER = 9007199254740991

-- Owner and counters of a chat, or nil when it does not exist. `ctxlen` is the stream length the
-- token counts were last in step with (nil for a chat that never had them), and `last` the stream's
-- newest id at that length. `due` is at most the earliest score in the deadlines set (nil when not
-- known): before it nothing needs reaping.
local function load_chat(meta_key)
  local m = redis.call('HMGET', meta_key, 'config', 'limit', 'used', 'reserved', 'deleted', 'ctxlen', 'last',
    'due')
  if not m[1] then
    return nil
  end
  -- `+ 0` rather than tonumber(), which parses the digits twice; the three balances are
  -- written with the chat, `ctxlen` and `due` may be missing (false) in a chat older than them.
  return {
    config = m[1],
    limit = m[2] + 0,
    used = m[3] + 0,
    reserved = m[4] + 0,
    deleted = m[5] == '1',
    ctxlen = m[6] and m[6] + 0 or nil,
    -- A missing field comes back as false, not nil; a chat with no message yet has ''.
    last = m[7] ~= '' and m[7] or nil,
    due = m[8] and m[8] + 0 or nil,
  }
end

-- The caller's live chat, or nil and the status saying why not: a chat of another config reads as not
-- found (api.md Part B 7), a deleted one as deleted.
local function owned_chat(meta_key, config_id)
  local chat = load_chat(meta_key)
  if not chat or chat.config ~= config_id then
    return nil, 'not_found'
  end
  if chat.deleted then
    return nil, 'deleted'
  end
  return chat, nil
end

-- The journal's oldest entries are folded into a checkpoint once it holds JOURNAL_KEPT +
-- JOURNAL_FOLD_BATCH of them: all but the newest JOURNAL_KEPT are added up into the meta hash's
-- checkpoint fields, in the script that wrote the entry, so at every moment the checkpoint plus the
-- entries left add up to the counters exactly (design.md section 12). Fields: jn entries folded, jdu
-- jdr jdl jsf the sums of their deltas and clamped amounts, jex how many were expiries, jto the id of
-- the newest folded entry (Ledger.read_journal shows them as one `checkpoint` entry). Only the entries
-- folded are read (a stream entry turned into Lua tables is most of a fold's cost), and they are
-- trimmed, not the stream rebuilt from the entries kept (re-adding them cost half as much again): a
-- node keeps a trimmed entry's bytes until its last entry goes, so the journal may hold one node more
-- (design.md section 12).
local function fold_journal(journal_key, length)
  if length < JOURNAL_KEPT + JOURNAL_FOLD_BATCH then
    return
  end
  local folded = length - JOURNAL_KEPT
  local entries = redis.call('XRANGE', journal_key, '-', '+', 'COUNT', folded)
  local du, dr, dl, sf, ex = 0, 0, 0, 0, 0
  for i = 1, #entries do
    -- Written by `journal` below, always in this order: op, rid, du, dr, dl, sf.
    local f = entries[i][2]
    du, dr, dl, sf = du + f[6], dr + f[8], dl + f[10], sf + f[12]
    if f[2] == 'expire' then
      ex = ex + 1
    end
  end
  local meta_key = string.sub(journal_key, 1, -8) .. 'meta'
  local c = redis.call('HMGET', meta_key, 'jn', 'jdu', 'jdr', 'jdl', 'jsf', 'jex')
  redis.call('HSET', meta_key, 'jn', int((tonumber(c[1]) or 0) + #entries),
    'jdu', int((tonumber(c[2]) or 0) + du), 'jdr', int((tonumber(c[3]) or 0) + dr),
    'jdl', int((tonumber(c[4]) or 0) + dl), 'jsf', int((tonumber(c[5]) or 0) + sf),
    'jex', int((tonumber(c[6]) or 0) + ex), 'jto', entries[#entries][1])
  redis.call('XTRIM', journal_key, 'MAXLEN', length - #entries)
end

-- One journal entry per balance move, written by the script that makes the move, so the journal can
-- never disagree with the counters: the deltas of every entry (and the checkpoint's sums, above) add
-- up to used, reserved and limit. Every entry has the same fields, so the stream's listpacks store the
-- names once. `clamped` is what a settle's cost exceeded its hold by (recorded, not charged; 'sf').
-- A reserve's entry does not look for a fold (one XLEN less a message): its hold's settle, void or
-- expiry writes the next entry and does, so the journal holds at most one entry more per open hold.
local function journal(journal_key, op, reservation_id, d_used, d_reserved, d_limit, clamped)
  redis.call('XADD', journal_key, '*', 'op', op, 'rid', reservation_id,
    'du', int(d_used), 'dr', int(d_reserved), 'dl', int(d_limit), 'sf', int(clamped))
  if op ~= 'reserve' then
    fold_journal(journal_key, redis.call('XLEN', journal_key))
  end
end

-- Lazy reaping: release open holds whose deadline has passed (their worker died or hung) and forget
-- resolved reservations past retention. Bounded per call; what is left is reaped by the next call.
-- Subtracts the released amount from chat.reserved and writes it back, so callers see true figures;
-- each reclaimed hold gets an 'expire' journal entry. Before the chat's `due` nothing can be due, and
-- the deadlines set is not read at all: most calls skip it. A reserve lowers `due` to its
-- hold's deadline; a pass here sets it to the earliest score left. Settling or voiding a hold only
-- raises its score, so `due` stays at most the earliest score (early, at worst: one empty pass).
local function reap(meta_key, deadlines_key, reservations_key, journal_key, chat, now, retention_ms)
  if chat.due and now < chat.due then
    return 0
  end
  local due = redis.call('ZRANGEBYSCORE', deadlines_key, '-inf', now, 'LIMIT', 0, REAP_BATCH_MAX)
  local released, expired = 0, 0
  for _, id in ipairs(due) do
    local amount = tonumber(redis.call('HGET', reservations_key, id))
    if amount then
      released = released + amount
      expired = expired + 1
      redis.call('HSET', reservations_key, id, EXPIRED)
      redis.call('ZADD', deadlines_key, int(now + retention_ms), id)
      journal(journal_key, 'expire', id, 0, -amount, 0, 0)
    else
      redis.call('HDEL', reservations_key, id)
      redis.call('ZREM', deadlines_key, id)
    end
  end
  local earliest = redis.call('ZRANGE', deadlines_key, 0, 0, 'WITHSCORES')[2]
  chat.due = tonumber(earliest) or NEVER
  if expired > 0 then
    chat.reserved = chat.reserved - released
    redis.call('HSET', meta_key, 'reserved', int(chat.reserved), 'due', int(chat.due))
    redis.call('HINCRBY', meta_key, 'expired', expired)
  else
    redis.call('HSET', meta_key, 'due', int(chat.due))
  end
  return expired
end

-- Settled and voided holds are forgotten at once: their two records go, and the id joins the chat's
-- list of latest resolutions, a string of its own (';<id>=<state>' each, newest last), cut back to its
-- newest RESOLVED_BYTES (14 holds at least) once it holds twice that. That is all a replayed settle or
-- void needs to be recognised and change nothing. APPEND answers the list's length, so a resolution
-- never reads the list into Lua (a kilobyte string read, extended and written back on every one cost
-- more than the rest of the resolution). A chat resolved before the list had a key of its own kept it
-- in field RESOLVED of the reservations hash, still read when a reservation has no record. Expired
-- holds keep their records for the retention (a hung worker's settle may come late).
local RESOLVED = '~'

-- The state that a list of resolutions (a string, or false for none) gives the reservation, or nil.
local function state_in(list, id)
  if not list then
    return nil
  end
  local at = string.find(list, ';' .. id .. '=', 1, true)
  return at and string.sub(list, at + #id + 2, at + #id + 2) or nil
end

-- The open amount of a reservation, or nil plus the status naming why it cannot be resolved.
local function open_amount(reservations_key, resolved_key, id)
  local state = redis.call('HGET', reservations_key, id)
    or state_in(redis.call('GET', resolved_key), id)
    or state_in(redis.call('HGET', reservations_key, RESOLVED), id)
  if not state then
    return nil, 'reservation_not_found'
  elseif state == SETTLED then
    return nil, 'reservation_already_settled'
  elseif state == VOIDED then
    return nil, 'reservation_already_voided'
  elseif state == EXPIRED then
    return nil, 'reservation_expired'
  end
  return tonumber(state), nil
end

-- Mark a reservation settled or voided: its records go, and the list of the latest resolutions notes it.
-- The deadlines set and the reservations hash never empty (Redis would delete them), as every key of a
-- script must exist on a node importing the chat's slot while it migrates: each keeps a member RESOLVED
-- that no reservation removes (never due; in the hash, '' or a chat's older list), written at the chat's
-- first resolution with the list in its own key, which APPEND tells: the list is then this one entry.
local function resolve(deadlines_key, reservations_key, resolved_key, id, state)
  redis.call('HDEL', reservations_key, id)
  redis.call('ZREM', deadlines_key, id)
  local entry = ';' .. id .. '=' .. state
  local bytes = redis.call('APPEND', resolved_key, entry)
  if bytes == #entry then
    redis.call('ZADD', deadlines_key, 'NX', int(NEVER), RESOLVED)
    redis.call('HSETNX', reservations_key, RESOLVED, '')
  elseif bytes > 2 * RESOLVED_BYTES then
    local newest = redis.call('GETRANGE', resolved_key, -RESOLVED_BYTES, -1)
    redis.call('SET', resolved_key, string.sub(newest, (string.find(newest, ';', 1, true))))
  end
end

-- The shared opening of settle and void: load the chat, reap due holds (this one included, if its
-- deadline passed), and find the reservation still open. Returns chat, granted milli-tokens and the
-- server time, or nil and (in the second place) the status saying why not.
local function open_reservation(meta_key, deadlines_key, reservations_key, journal_key, resolved_key, id,
    retention_ms)
  local chat = load_chat(meta_key)
  if not chat then
    return nil, 'not_found'
  end
  local now = now_ms()
  reap(meta_key, deadlines_key, reservations_key, journal_key, chat, now, retention_ms)
  local granted, status = open_amount(reservations_key, resolved_key, id)
  if not granted then
    return nil, status
  end
  return chat, granted, now
end

-- An idempotency record is one string, '<state>|<fingerprint>|<detail>': state 'p' (pending: detail is
-- the reservation id), 'd' (done: detail is the reply's stream id) or 't' (top-up done: detail is
-- '<limit>|<used>' after it). Returns state, fingerprint, detail; nil for no record.
local function read_record(key)
  local record = redis.call('GET', key)
  if not record then
    return nil
  end
  local state, fingerprint, detail = string.match(record, '^(%a)|([^|]*)|(.*)$')
  return state, fingerprint, detail
end

-- Note an idempotency record in the chat's index of them (Keyspace.chat_idempotency_index), so an
-- erasure finds every record of the chat without a SCAN; `gone_ms` is when the record has expired for
-- sure. Entries past theirs are dropped here, so the index holds about a day of keyed requests.
local function index_record(index_key, record_key, gone_ms, now)
  redis.call('ZREMRANGEBYSCORE', index_key, '-inf', '(' .. int(now))
  redis.call('ZADD', index_key, int(gone_ms), string.match(record_key, '[^:]+$'))
end
