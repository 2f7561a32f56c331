-- create_chat: write a new chat's meta hash and the first journal entry (its limit).
-- KEYS[1] meta hash   KEYS[2] journal stream
-- ARGV[1] config id (owner)      ARGV[2] token limit, milli-tokens
-- ARGV[3] created_at, epoch ms   ARGV[4] agent name   ARGV[5] company name
-- ARGV[6] the request's fingerprint, or '' without an Idempotency-Key
-- The creation time is the worker's, the same value that scores the config's chat index (written
-- before this script, design.md section 3), so listing order and created_at always agree.
-- With an Idempotency-Key the chat id is derived from (config, key) (ledger/idempotency.py), so this
-- script's EXISTS check is the key's record: the same request again finds its chat.
-- Reply: {'ok'}; {'replay', {field, value, ...}} (the chat this key created; its meta hash now);
--        {'key_reused'} (the key created a chat from another request).
-- An existing chat without a fingerprint is a programmer error (random ids do not collide).
local meta, journal_key = KEYS[1], KEYS[2]
local config_id = ARGV[1]
local limit_milli = ARGV[2]
local created_ms = ARGV[3]
local agent_name = ARGV[4]
local company_name = ARGV[5]
local fingerprint = ARGV[6]

if redis.call('EXISTS', meta) == 1 then
  if fingerprint == '' then
    return redis.error_reply('create_chat: chat id already in use')
  end
  if redis.call('HGET', meta, 'fingerprint') ~= fingerprint then
    return {'key_reused'}
  end
  return {'replay', redis.call('HGETALL', meta)}
end
-- The fields every message reads (load_chat) come first: a small hash is one listpack that Redis
-- searches from its start, field by field.
redis.call('HSET', meta,
  'config', config_id, 'limit', limit_milli, 'used', '0', 'reserved', '0', 'deleted', '0',
  -- The token counts (none) are in step with the stream (empty): settle keeps them from the first message,
  -- so they exist whenever messages do (a script's keys must exist on a node importing the slot).
  'ctxlen', '0', 'last', '', 'due', int(NEVER),
  'created', created_ms, 'deleted_at', '0',
  'agent', agent_name, 'company', company_name,
  'expired', '0', 'clamped', '0',
  'limit0', limit_milli, 'fingerprint', fingerprint)
journal(journal_key, 'create', '', 0, 0, limit_milli, 0)
return {'ok'}
