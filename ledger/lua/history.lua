-- history: one page of a chat's messages, oldest first, with the total, checked against the owner in
-- the same atomic read.
-- KEYS[1] meta hash   KEYS[2] messages stream
-- ARGV[1] caller's config id, or '' for the admin surface (any chat, deleted or not)
-- ARGV[2] mode: 'offset', 'after' or 'before'
-- ARGV[3] the offset (mode offset) or an exclusive stream id (modes after and before)
-- ARGV[4] page size
-- Reply: {'ok', total, entries} with entries as {id, {field, value, ...}}, oldest first;
--        {'not_found'}; {'deleted'}.
-- Cost: O(log n + page), cursors and offsets alike: entry ids are '<position>-<time ms>' (settle.lua),
-- so an offset page is an XRANGE from '<offset>'. A chat written before positions (time ids) has no
-- such entry, and its offset walks min(offset, total - offset) entries in chunks of HISTORY_SKIP_CHUNK
-- from whichever end is nearer, so memory stays bounded on a deep page.
local meta, msgs = KEYS[1], KEYS[2]
local config_id = ARGV[1]
local mode = ARGV[2]
local position = ARGV[3]
local limit = tonumber(ARGV[4])

-- An empty config id is the admin surface: any config's chat, deleted ones included.
if config_id == '' then
  if redis.call('EXISTS', meta) == 0 then
    return {'not_found'}
  end
else
  local chat, status = owned_chat(meta, config_id)
  if not chat then
    return {status}
  end
end

-- Walk n entries from `start` towards `stop` and return the exclusive bound just past them (nil when
-- the stream ends first).
local function skip(cmd, start, stop, n)
  while n > 0 do
    local batch = redis.call(cmd, msgs, start, stop, 'COUNT', math.min(n, HISTORY_SKIP_CHUNK))
    if #batch == 0 then
      return nil
    end
    n = n - #batch
    start = '(' .. batch[#batch][1]
  end
  return start
end

local function reversed(list)
  local out = {}
  for i = #list, 1, -1 do
    out[#out + 1] = list[i]
  end
  return out
end

local total = redis.call('XLEN', msgs)
local entries = {}
if mode == 'after' then
  entries = redis.call('XRANGE', msgs, '(' .. position, '+', 'COUNT', limit)
elseif mode == 'before' then
  -- Nothing precedes 0-0, which Redis refuses as an exclusive bound.
  if position ~= '0-0' then
    entries = reversed(redis.call('XREVRANGE', msgs, '(' .. position, '-', 'COUNT', limit))
  end
elseif mode == 'offset' then
  local offset = tonumber(position)
  local at = int(offset)
  -- The entry at position `offset` has the id '<offset>-<time>' when the chat's ids are positions up
  -- to it; an entry whose id starts so can be at no other position, since ids only grow.
  local page = offset < total and redis.call('XRANGE', msgs, at, '+', 'COUNT', limit) or {}
  if page[1] and string.sub(page[1][1], 1, #at + 1) == at .. '-' then
    entries = page
  elseif offset < total then
    local newer = total - offset - limit
    if offset <= newer then
      local start = skip('XRANGE', '-', '+', offset)
      entries = redis.call('XRANGE', msgs, start, '+', 'COUNT', limit)
    else
      local take = limit
      if newer < 0 then
        take = limit + newer
        newer = 0
      end
      local start = skip('XREVRANGE', '+', '-', newer)
      entries = reversed(redis.call('XREVRANGE', msgs, start, '-', 'COUNT', take))
    end
  end
else
  return redis.error_reply('history: unknown mode ' .. mode)
end
return {'ok', total, entries}
