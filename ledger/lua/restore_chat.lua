-- restore_chat: undo a soft delete (the admin surface; any config's chat).
-- KEYS[1] meta hash
-- Reply: {'ok', {field, value, ...}} (the meta hash after the change); {'not_found'}; {'not_deleted'}.
-- The config's live index entry is re-added by the caller afterwards (another slot).
local meta = KEYS[1]

local chat = load_chat(meta)
if not chat then
  return {'not_found'}
end
if not chat.deleted then
  return {'not_deleted'}
end
redis.call('HSET', meta, 'deleted', '0', 'deleted_at', '0')
return {'ok', redis.call('HGETALL', meta)}
