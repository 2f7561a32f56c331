-- create_chat: write a new chat's meta hash.
-- KEYS[1] meta hash
-- ARGV[1] config id (owner)      ARGV[2] token limit, milli-tokens
-- ARGV[3] created_at, epoch ms   ARGV[4] agent name   ARGV[5] company name
-- The creation time is the worker's, the same value that scores the config's chat index (written
-- before this script, design.md section 3), so listing order and created_at always agree.
-- Reply: {'ok'}. An existing chat is a programmer error (ids are random UUIDs), not an outcome.
local config_id = ARGV[1]
local limit_milli = ARGV[2]
local created_ms = ARGV[3]
local agent_name = ARGV[4]
local company_name = ARGV[5]

if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('create_chat: chat id already in use')
end
redis.call('HSET', KEYS[1],
  'config', config_id, 'created', created_ms,
  'limit', limit_milli, 'used', '0', 'reserved', '0',
  'deleted', '0', 'deleted_at', '0',
  'agent', agent_name, 'company', company_name,
  'expired', '0', 'clamped', '0')
return {'ok'}
