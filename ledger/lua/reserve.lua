-- reserve: hold enough of a chat's budget for one exchange, and price the history the model needs.
-- KEYS[1] meta hash   KEYS[2] messages stream   KEYS[3] deadlines zset   KEYS[4] reservations hash
-- KEYS[5] journal stream   KEYS[6] packed token counts   KEYS[7] latest resolutions (unused: every
-- exchange script takes the same keys)   KEYS[8] (optional) the Idempotency-Key's record
-- KEYS[9] (with KEYS[8]) the chat's index of its idempotency records
-- ARGV[1] caller's config id (a chat of another config reads as not found)
-- ARGV[2] reservation id (fresh per request)
-- ARGV[3] the numbers, packed (ledger/packing.py), in this order:
--   prompt_milli: the priced prompt parts the worker knows (system prompt and the new message);
--   prompt_weight_milli: price of one history token; completion_weight_milli: price of one reply
--   token; completion_tokens_max: most reply tokens wanted; history_tokens_max: the context budget for
--   history, in tokens; history_count_max: most history messages to consider; ttl_ms: the hold's
--   deadline from now; retention_ms of resolved records; record_ttl_ms: the idempotency record's
--   lifetime (with KEYS[8]); hold_shares: a hold's reply part is at most this share of the reply tokens
--   free (design.md section 4); known_tokens and known_count (see ARGV[4])
-- ARGV[4] how the caller gets the context (ContextMode in ledger/scripts.py):
--   CONTEXT_IN_REPLY: the reply's last element carries the context's entries;
--   CONTEXT_READ_BY_CALLER: that element is empty, the caller reads the entries itself (ledger/context.py);
--   CONTEXT_PRICED_BY_CALLER: as READ_BY_CALLER, and the caller holds the chat's messages up to ARGV[5]
--     and priced their context at known_tokens tokens in known_count messages: used as it is when
--     ARGV[5] is still the newest message, since pricing the counts in Lua is the dearest part of this
--     script; else the chat is priced here.
-- ARGV[5] the caller's newest message id ('' unless ARGV[4] is CONTEXT_PRICED_BY_CALLER)
-- ARGV[6] the request's fingerprint (only with KEYS[8])
-- Clock: Redis TIME only.
-- Reply, one shape whatever ARGV[4]:
--   {'ok', granted_milli, prompt_milli_total, completion_tokens, expired_count, context_count, length,
--    newest_id, entries}: the context is the newest context_count messages of a stream of `length`
--    whose newest id is newest_id ('' when empty), which let the caller check what it read; entries
--    are those messages as stream entries {id, {field, value, ...}}, newest first, with
--    CONTEXT_IN_REPLY, else {}. Amounts are integers.
--   {'insufficient', available_milli, needed_milli, limit_milli, used_milli} (the chat cannot pay even
--   with nothing held); {'held', available_milli, needed_milli, limit_milli, used_milli, reserved_milli}
--   (it could, but other holds have those tokens: a retry may pass); {'not_found'};
--   {'deleted'}; {'replay', entry} (the key's exchange completed: its saved reply);
--   {'in_flight'} (the key's exchange is still open); {'key_reused'} (another request's key).
local meta, msgs, deadlines, reservations, journal_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local context_key = KEYS[6]
local record_key = KEYS[8]
local record_index = KEYS[9]
local config_id = ARGV[1]
local reservation_id = ARGV[2]
local prompt_milli, prompt_weight_milli, completion_weight_milli, completion_tokens_max,
  history_tokens_max, history_count_max, ttl_ms, retention_ms, record_ttl_ms, hold_shares, known_tokens,
  known_count = unpack_numbers('>I8I8I8I8I8I8I8I8I8I8I8I8', ARGV[3])
local context_mode = ARGV[4]
local known_id = ARGV[5]
local fingerprint = ARGV[6]

local chat = load_chat(meta)
if not chat or chat.config ~= config_id then
  return {'not_found'}
end

local now = now_ms()
-- Reap first: a dead worker's hold must cause neither a phantom 402 nor a phantom 409 for its retry.
local expired = reap(meta, deadlines, reservations, journal_key, chat, now, retention_ms)

-- A retried request: answer its outcome before looking at the chat's state, so a completed exchange
-- is replayed even if the chat ran out of tokens or was deleted since.
if record_key then
  local state, recorded_fingerprint, detail = read_record(record_key)
  if state and recorded_fingerprint ~= fingerprint then
    return {'key_reused'}
  elseif state == 'd' then
    return {'replay', redis.call('XRANGE', msgs, detail, detail)[1]}
  elseif state == 'p' and tonumber(redis.call('HGET', reservations, detail)) then
    -- Its hold is still open: the first request is being served (or its worker died, and the hold
    -- will expire at its deadline; then this record is stale and a retry proceeds).
    return {'in_flight'}
  end
end

if chat.deleted then
  return {'deleted'}
end
-- The tokens of a stream entry, as settle stored them.
local function entry_tokens(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' then
      return tonumber(fields[i + 1])
    end
  end
  return 0
end

-- The token counts of the newest `n` messages, newest first. They come from the packed counts
-- (pack_count in the prelude), which settle keeps in step with the stream, so no message is read into
-- Lua and no count goes through tonumber. Counts out of step or too few (a chat older than
-- them, or a message appended by a worker that did not keep them) are rebuilt here from the stream,
-- once; a context longer than the counts kept is priced from the stream every time. Sets chat.last to
-- the stream's newest id.
local function newest_token_counts(n, length)
  local in_step = chat.ctxlen == length and (length == 0 or chat.last ~= nil)
  if in_step and n <= CONTEXT_TOKENS_KEPT then
    local wanted = math.min(n, length)
    if wanted == 0 then
      return {}
    end
    local packed = redis.call('GETRANGE', context_key, -4 * wanted, -1)
    if #packed == 4 * wanted then
      return unpack_counts_newest_first(packed)
    end
    in_step = false
  end
  local recent = redis.call('XREVRANGE', msgs, '+', '-', 'COUNT', math.max(n, CONTEXT_TOKENS_KEPT))
  local counts, kept = {}, {}
  for i, entry in ipairs(recent) do
    counts[i] = entry_tokens(entry)
    if i <= CONTEXT_TOKENS_KEPT then
      -- Oldest first, as settle appends them.
      kept[CONTEXT_TOKENS_KEPT + 1 - i] = pack_count(counts[i])
    end
  end
  if in_step then
    return counts
  end
  local first = math.max(CONTEXT_TOKENS_KEPT + 1 - #recent, 1)
  redis.call('SET', context_key, table.concat(kept, '', first, CONTEXT_TOKENS_KEPT))
  if #recent > 0 then
    chat.last = recent[1][1]
    redis.call('HSET', meta, 'ctxlen', length, 'last', chat.last)
  else
    redis.call('HSET', meta, 'ctxlen', length)
  end
  return counts
end

-- Context: the newest messages that fit the token budget, so the prompt is priced before the call.
local context_count = 0
local history_tokens = 0
local length = 0
-- The caller's own pricing stands when the messages it priced are still the newest (the stream's
-- newest id and length are those settle last recorded), within the bounds asked for.
local caller_current = false
if history_count_max > 0 then
  length = redis.call('XLEN', msgs)
  if context_mode == CONTEXT_PRICED_BY_CALLER and known_id == chat.last and chat.ctxlen == length then
    history_tokens, context_count = known_tokens, known_count
    caller_current = context_count <= history_count_max and history_tokens <= history_tokens_max
  end
end
if history_count_max > 0 and not caller_current then
  history_tokens, context_count = 0, 0
  for i, tokens in ipairs(newest_token_counts(history_count_max, length)) do
    if i > history_count_max or history_tokens + tokens > history_tokens_max then
      break
    end
    history_tokens = history_tokens + tokens
    context_count = i
  end
end

local available = chat.limit - chat.used - chat.reserved
local prompt_total = prompt_milli + history_tokens * prompt_weight_milli
-- The spec's 402 rule (api.md Part B 8): the prompt and at least one reply token must be payable, by
-- what is left with nothing held; tokens that other holds have are not spent, and come back.
local needed = prompt_total + completion_weight_milli
if chat.limit - chat.used < needed then
  return {'insufficient', available, needed, chat.limit, chat.used}
end
if available < needed then
  return {'held', available, needed, chat.limit, chat.used, chat.reserved}
end

-- Grant what the reply may cost, capped by what the chat can pay: the upstream's max_tokens comes from
-- this, so a model can never spend past the hold. Of a budget too small for hold_shares full replies,
-- a hold takes one share of the free reply tokens (at least the floor, when free), so concurrent
-- messages of one chat hold at once instead of the first holding everything.
local completion_tokens = completion_tokens_max
if completion_weight_milli > 0 then
  local free_tokens = math.floor((available - prompt_total) / completion_weight_milli)
  local share = math.max(math.ceil(free_tokens / hold_shares), HOLD_REPLY_FLOOR_TOKENS)
  completion_tokens = math.min(completion_tokens_max, free_tokens, share)
end
local granted = prompt_total + completion_tokens * completion_weight_milli

-- The hold's record first: a reservation id in use (random 128-bit ids never collide, so a caller's
-- bug) must leave everything as it was.
if redis.call('HSETNX', reservations, reservation_id, int(granted)) == 0 then
  return redis.error_reply('reserve: reservation id already in use')
end
chat.reserved = chat.reserved + granted
local deadline = now + ttl_ms
if chat.due and chat.due <= deadline then
  redis.call('HSET', meta, 'reserved', int(chat.reserved))
else
  -- This hold is now the earliest deadline: nothing may skip reaping past it (see reap).
  redis.call('HSET', meta, 'reserved', int(chat.reserved), 'due', int(deadline))
end
redis.call('ZADD', deadlines, int(deadline), reservation_id)
journal(journal_key, 'reserve', reservation_id, 0, granted, 0, 0)
if record_key then
  redis.call('SET', record_key, 'p|' .. fingerprint .. '|' .. reservation_id, 'PX', int(record_ttl_ms))
  -- Settle rewrites the record with a fresh TTL before the hold's deadline at the latest.
  index_record(record_index, record_key, now + ttl_ms + record_ttl_ms, now)
end
local entries = {}
if context_mode == CONTEXT_IN_REPLY and context_count > 0 then
  entries = redis.call('XREVRANGE', msgs, '+', '-', 'COUNT', context_count)
end
-- Integers in the reply (Redis converts a Lua number to one exactly below 2^53): no formatting here.
return {'ok', granted, prompt_total, completion_tokens, expired, context_count, length,
  length > 0 and chat.last or '', entries}
