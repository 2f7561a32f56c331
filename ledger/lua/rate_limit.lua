-- rate_limit: one request of an API key through a GCRA limiter (the "leaky bucket as a meter").
-- KEYS[1] the key's limiter state: the theoretical arrival time (TAT) of its next request, in us
-- ARGV[1] emission_interval_us: 1e6 / requests per second   ARGV[2] burst: requests allowed at once
-- Clock: Redis TIME only, so every worker meters against the same clock.
-- Reply: {1, 0} allowed; {0, retry_after_ms} refused (nothing is recorded for a refused request).
-- One string per key, rewritten in place, and expiring once the key has been idle for a burst: the
-- state is O(1) whatever the rate, unlike a log of request times.
local interval_us = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now_us, now_us)
local next_tat = tat + interval_us
local allowed_at = next_tat - interval_us * burst
if allowed_at > now_us then
  return {0, math.ceil((allowed_at - now_us) / 1000)}
end
redis.call('SET', KEYS[1], int(next_tat), 'PX', math.ceil((next_tat - now_us) / 1000) + 1)
return {1, 0}
