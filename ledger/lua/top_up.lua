-- top_up: add tokens to a chat's limit (PUT /chats/{id}/tokens/ adds, it does not set).
-- KEYS[1] meta hash
-- ARGV[1] caller's config id   ARGV[2] milli-tokens to add (> 0)   ARGV[3] the most a limit may be
-- Reply: {'ok', field, value, ...} (the whole meta hash after the change);
--        {'not_found'}; {'deleted'}; {'limit_too_large'}.
local meta = KEYS[1]
local config_id = ARGV[1]
local add_milli = tonumber(ARGV[2])
local limit_milli_max = tonumber(ARGV[3])

local chat, status = owned_chat(meta, config_id)
if not chat then
  return {status}
end
-- The bound keeps every balance below 2^53, where Lua's doubles stop being exact.
if chat.limit + add_milli > limit_milli_max then
  return {'limit_too_large'}
end
redis.call('HSET', meta, 'limit', int(chat.limit + add_milli))
local reply = redis.call('HGETALL', meta)
table.insert(reply, 1, 'ok')
return reply
