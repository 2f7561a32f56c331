-- erase_chat: remove a chat for good, every key of it (an erasure request or the retention of deleted
-- chats; design.md section 12). Safe to run again: a call on a chat that is already gone removes
-- whatever is left of it and answers as this one did.
-- KEYS[1] meta hash   KEYS[2] messages stream   KEYS[3] deadlines zset   KEYS[4] reservations hash
-- KEYS[5] journal stream   KEYS[6] packed token counts   KEYS[7] latest resolutions
-- KEYS[8] index of the idempotency records
-- ARGV[1] the config the chat must belong to, or '' for any (the admin surface)
-- ARGV[2] deleted_before_ms: erase only a chat soft-deleted before this server time (0: any chat,
--         deleted or not): the retention pass, which must not erase a chat restored meanwhile
-- The idempotency records are on this slot too (Keyspace.chat_idempotency), named by the index.
-- UNLINK frees a long history or journal off the main thread, so a call stays short whatever the
-- chat's size; at most ERASE_RECORDS_MAX records go per call, the caller calls again while `more`.
-- Reply: {'ok', config_id, existed, more}: config_id of the chat erased ('' when none was left),
--        existed 1 when its meta hash was still there, more 1 when records are left for another call;
--        {'not_found'} (a chat of another config); {'kept'} (not deleted before deleted_before_ms).
local meta, index = KEYS[1], KEYS[8]
local config_id = ARGV[1]
local deleted_before_ms = tonumber(ARGV[2])

local chat = load_chat(meta)
if chat and config_id ~= '' and chat.config ~= config_id then
  return {'not_found'}
end
if chat and deleted_before_ms > 0 then
  local deleted_at = tonumber(redis.call('HGET', meta, 'deleted_at')) or 0
  if not chat.deleted or deleted_at >= deleted_before_ms then
    return {'kept'}
  end
end
-- Without its meta hash the chat is already erased, or half: whatever is left of it goes too.
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
-- The records' names: the chat's tag, then ':idem:' and the digest the index holds.
local prefix = string.sub(meta, 1, -5) .. 'idem:'
local digests = redis.call('ZRANGE', index, 0, ERASE_RECORDS_MAX - 1)
for _, digest in ipairs(digests) do
  redis.call('UNLINK', prefix .. digest)
end
if #digests > 0 then
  redis.call('ZREMRANGEBYRANK', index, 0, #digests - 1)
end
return {'ok', chat and chat.config or '', chat and 1 or 0, redis.call('EXISTS', index)}
