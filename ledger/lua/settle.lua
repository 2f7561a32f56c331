-- settle: charge an exchange's actual cost, at most its hold, release the rest of the hold, and append
-- the user message and the reply to the history as one atomic pair.
-- KEYS[1] meta hash   KEYS[2] messages stream   KEYS[3] deadlines zset   KEYS[4] reservations hash
-- KEYS[5] journal stream   KEYS[6] packed token counts (kept in step with the stream)
-- KEYS[7] latest resolutions   KEYS[8] (optional) the Idempotency-Key's record, marked done here
-- ARGV[1] reservation id
-- ARGV[2] the numbers, packed (ledger/packing.py): charge_milli (prompt and reply tokens times their
--         weights), retention_ms of the resolved record, record_ttl_ms (the idempotency record's
--         lifetime, with KEYS[8])
-- ARGV[3] user message content   ARGV[4] its tokens
-- ARGV[5] reply content          ARGV[6] its tokens
-- ARGV[7] reply flags ('t' truncated, 'e' usage estimated; this script adds 's' when it clamps)
-- ARGV[8] the request's fingerprint (only with KEYS[8])
-- Clock: Redis TIME only (the time part of stream ids, and the retention).
-- Reply: {'ok', charged_milli, clamped_milli, user_entry_id, reply_entry_id, limit, used, reserved,
--        previous_id, length} where previous_id is the newest message before this pair ('' when the
--        chat had none, or its token counts are not kept) and length the stream's length after it, so a
--        worker whose context cache ended at previous_id can add the pair (ledger/context.py);
--        {'not_found'}; {'deleted'} (the hold is voided); or a reservation status from open_amount.
local meta, msgs, deadlines, reservations, journal_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local context_key, resolved = KEYS[6], KEYS[7]
local record_key = KEYS[8]
local reservation_id = ARGV[1]
local charge_milli, retention_ms, record_ttl_ms = unpack_numbers('>I8I8I8', ARGV[2])
local user_content, user_tokens = ARGV[3], ARGV[4]
local reply_content, reply_tokens = ARGV[5], ARGV[6]
local flags = ARGV[7]
local fingerprint = ARGV[8]

local chat, granted, now = open_reservation(meta, deadlines, reservations, journal_key, resolved,
  reservation_id, retention_ms)
if not chat then
  return {granted} -- on failure the second value is the status
end

chat.reserved = chat.reserved - granted
if chat.deleted then
  -- Deleted while the model ran: a deleted chat takes no messages and no tokens (api.md Part B 9).
  redis.call('HSET', meta, 'reserved', int(chat.reserved))
  resolve(deadlines, reservations, resolved, reservation_id, VOIDED)
  journal(journal_key, 'void', reservation_id, 0, -granted, 0, 0)
  return {'deleted'}
end

-- The hold is the most an exchange can cost (design.md section 4): a cost above it (a low prompt
-- estimate, or a model server that misreports or ignores max_tokens) is charged the hold, and the
-- excess is recorded as clamped on the message, the chat and the journal entry. Charging past the hold
-- up to the chat's limit let one lying usage drain a whole chat. The hold was part of `reserved`, so
-- used still never passes limit.
local charged = math.min(charge_milli, granted)
local clamped = charge_milli - charged
if clamped > 0 then
  flags = flags .. 's'
  redis.call('HINCRBY', meta, 'clamped', int(clamped))
end
chat.used = chat.used + charged
resolve(deadlines, reservations, resolved, reservation_id, SETTLED)
journal(journal_key, 'settle', reservation_id, charged, -granted, 0, clamped)

-- Entry ids say where a message is: '<position>-<time ms>', the position counted from 0, so an offset
-- page is an XRANGE from '<offset>' (history.lua) and the time is the message's (Redis clock). Only a
-- stream whose newest entry sits at its own position takes them; a chat written with time ids ('*',
-- before positions) keeps those, since its next id must be above them.
local function next_position()
  local length = redis.call('XLEN', msgs)
  if length == 0 then
    return 0
  end
  -- The meta's newest id while it is in step with the stream (it is the newest: the stream only grows).
  local newest = chat.ctxlen == length and chat.last or nil
  if not newest then
    newest = redis.call('XREVRANGE', msgs, '+', '-', 'COUNT', 1)[1][1]
  end
  if string.match(newest, '^(%d+)%-') == int(length - 1) then
    return length
  end
  return nil
end
local user_at, reply_at = '*', '*'
local position = next_position()
if position then
  user_at, reply_at = int(position) .. '-' .. int(now), int(position + 1) .. '-' .. int(now)
end
-- Both entries carry the same fields so the stream's listpacks store the field names once.
local user_id = redis.call('XADD', msgs, user_at,
  'u', '1', 'c', user_content, 't', user_tokens, 'm', '0', 'f', '')
local reply_id = redis.call('XADD', msgs, reply_at,
  'u', '0', 'c', reply_content, 't', reply_tokens, 'm', int(charged), 'f', flags)
-- The packed counts price the next reserve's history without reading messages (reserve.lua), and
-- ctxlen and last record the stream it follows. Settle is the only writer of the stream, so it follows
-- it whenever the chat has one (every chat created since the counts exist); should anything else
-- append, reserve finds the recorded length wrong and rebuilds the counts.
local previous_id, length = '', 0
if chat.ctxlen ~= nil then
  -- Oldest first: the user message, then the reply. Trimmed back to CONTEXT_TOKENS_KEPT counts once
  -- it holds CONTEXT_TOKENS_SLACK more, not on every message (one call less per message).
  -- The counts come as digits, which the stream keeps; struct (on a real Redis) converts and packs
  -- both in one call, and the embedded Redis (fakeredis) has no struct.
  local counts
  if struct then
    counts = struct.pack('>I4I4', user_tokens, reply_tokens)
  else
    counts = pack_count(tonumber(user_tokens)) .. pack_count(tonumber(reply_tokens))
  end
  local bytes = redis.call('APPEND', context_key, counts)
  if bytes > 4 * (CONTEXT_TOKENS_KEPT + CONTEXT_TOKENS_SLACK) then
    redis.call('SET', context_key, redis.call('GETRANGE', context_key, -4 * CONTEXT_TOKENS_KEPT, -1))
  end
  previous_id, length = chat.last or '', chat.ctxlen + 2
  redis.call('HSET', meta, 'used', int(chat.used), 'reserved', int(chat.reserved),
    'ctxlen', int(length), 'last', reply_id)
else
  redis.call('HSET', meta, 'used', int(chat.used), 'reserved', int(chat.reserved))
end
if record_key then
  redis.call('SET', record_key, 'd|' .. fingerprint .. '|' .. reply_id, 'PX', int(record_ttl_ms))
end
-- Integers in the reply (Redis converts a Lua number to one exactly below 2^53): no formatting here.
return {'ok', charged, clamped, user_id, reply_id, chat.limit, chat.used, chat.reserved, previous_id,
  length}
