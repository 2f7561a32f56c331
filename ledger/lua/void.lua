-- void: release a hold without charging or writing anything (the model call failed or was refused).
-- KEYS[1] meta hash   KEYS[2] messages stream (unused, kept so every exchange script takes the same keys)
-- KEYS[3] deadlines zset   KEYS[4] reservations hash
-- ARGV[1] reservation id   ARGV[2] retention_ms of the resolved record
-- Clock: Redis TIME only.
-- Reply: {'ok', released_milli}; {'not_found'}; or a reservation status from open_amount.
local meta, deadlines, reservations = KEYS[1], KEYS[3], KEYS[4]
local reservation_id = ARGV[1]
local retention_ms = tonumber(ARGV[2])

local chat, granted, now = open_reservation(meta, deadlines, reservations, reservation_id, retention_ms)
if not chat then
  return {granted} -- on failure the second value is the status
end
chat.reserved = chat.reserved - granted
redis.call('HSET', meta, 'reserved', int(chat.reserved))
resolve(deadlines, reservations, reservation_id, VOIDED, now, retention_ms)
return {'ok', int(granted)}
