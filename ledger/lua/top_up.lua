-- top_up: add tokens to a chat's limit (PUT /chats/{id}/tokens/ adds, it does not set).
-- KEYS[1] meta hash   KEYS[2] journal stream   KEYS[3] (optional) the Idempotency-Key's record
-- KEYS[4] (with KEYS[3]) the chat's index of its idempotency records
-- ARGV[1] caller's config id   ARGV[2] milli-tokens to add (> 0)   ARGV[3] the most a limit may be
-- ARGV[4] the request's fingerprint   ARGV[5] idempotency_ttl_ms (both only with KEYS[3])
-- Reply: {'ok', {field, value, ...}} (the whole meta hash after the change);
--        {'replay', limit, used, {field, value, ...}} (the key's top-up happened: the balance it
--        answered, then the meta hash now);
--        {'not_found'}; {'deleted'}; {'limit_too_large'}; {'key_reused'}.
local meta, journal_key, record_key, record_index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local config_id = ARGV[1]
local add_milli = tonumber(ARGV[2])
local limit_milli_max = tonumber(ARGV[3])
local fingerprint = ARGV[4]
local record_ttl_ms = ARGV[5]

local chat = load_chat(meta)
if not chat or chat.config ~= config_id then
  return {'not_found'}
end
if record_key then
  local state, recorded_fingerprint, detail = read_record(record_key)
  if state and (state ~= 't' or recorded_fingerprint ~= fingerprint) then
    return {'key_reused'}
  elseif state == 't' then
    local limit, used = string.match(detail, '^(%d+)|(%d+)$')
    return {'replay', limit + 0, used + 0, redis.call('HGETALL', meta)}
  end
end
if chat.deleted then
  return {'deleted'}
end
-- The bound keeps every balance below 2^53, where Lua's doubles stop being exact.
if chat.limit + add_milli > limit_milli_max then
  return {'limit_too_large'}
end
chat.limit = chat.limit + add_milli
redis.call('HSET', meta, 'limit', int(chat.limit))
journal(journal_key, 'top_up', '', 0, 0, add_milli, 0)
if record_key then
  redis.call('SET', record_key, 't|' .. fingerprint .. '|' .. int(chat.limit) .. '|' .. int(chat.used),
    'PX', record_ttl_ms)
  local now = now_ms()
  index_record(record_index, record_key, now + record_ttl_ms, now)
end
return {'ok', redis.call('HGETALL', meta)}
