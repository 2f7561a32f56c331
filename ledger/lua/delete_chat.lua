-- delete_chat: soft delete. Flags the chat; removes nothing (api.md Part B 9, design.md section 6).
-- KEYS[1] meta hash
-- ARGV[1] caller's config id
-- Clock: Redis TIME for deleted_at.
-- Reply: {'ok', {field, value, ...}} (the meta hash after the change); {'not_found'}; {'deleted'}.
-- Open holds are left alone: their settle finds the flag, voids them and writes nothing.
local meta = KEYS[1]
local config_id = ARGV[1]

local chat, status = owned_chat(meta, config_id)
if not chat then
  return {status}
end
redis.call('HSET', meta, 'deleted', '1', 'deleted_at', int(now_ms()))
return {'ok', redis.call('HGETALL', meta)}
