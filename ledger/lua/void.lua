-- void: release a hold without charging or writing history (the model call failed or was refused).
-- KEYS[1] meta hash   KEYS[2] messages stream (unused: every exchange script takes the same keys)
-- KEYS[3] deadlines zset   KEYS[4] reservations hash   KEYS[5] journal stream
-- KEYS[6] context token list (unused, as KEYS[2])   KEYS[7] latest resolutions
-- ARGV[1] reservation id   ARGV[2] retention_ms of the resolved record
-- Clock: Redis TIME only.
-- Reply: {'ok', released_milli}; {'not_found'}; or a reservation status from open_amount.
-- An Idempotency-Key record pointing at this hold is left as it is: its reservation is no longer
-- open, so reserve treats it as stale and a retry proceeds.
local meta, deadlines, reservations, journal_key, resolved = KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[7]
local reservation_id = ARGV[1]
local retention_ms = tonumber(ARGV[2])

local chat, granted = open_reservation(meta, deadlines, reservations, journal_key, resolved, reservation_id,
  retention_ms)
if not chat then
  return {granted} -- on failure the second value is the status
end
chat.reserved = chat.reserved - granted
redis.call('HSET', meta, 'reserved', int(chat.reserved))
resolve(deadlines, reservations, resolved, reservation_id, VOIDED)
journal(journal_key, 'void', reservation_id, 0, -granted, 0, 0)
return {'ok', granted}
