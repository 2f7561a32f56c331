-- inspect_chat: any chat's meta hash as an operator should see it (the admin surface): holds whose
-- deadline passed are expired first, atomically with the read, so no admin view counts a dead
-- worker's hold as reserved. It reaps as the next reserve would have, writing the same journal entries.
-- KEYS[1] meta hash   KEYS[2] deadlines zset   KEYS[3] reservations hash   KEYS[4] journal stream
-- ARGV[1] retention_ms of resolved records
-- Clock: Redis TIME only.
-- Reply: {'ok', {field, value, ...}} (the meta hash after reaping); {'not_found'}.
local meta, deadlines, reservations, journal_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local retention_ms = tonumber(ARGV[1])

local chat = load_chat(meta)
if not chat then
  return {'not_found'}
end
reap(meta, deadlines, reservations, journal_key, chat, now_ms(), retention_ms)
return {'ok', redis.call('HGETALL', meta)}
