-- lease.lua: acquire, renew or release a role lease held by one worker.
--
-- KEYS[1] lease    string: the holder's name, with a time to live
--
-- ARGV[1] holder   the worker's name
-- ARGV[2] action   "acquire" | "renew" | "release"
-- ARGV[3] ttl_ms   time to live for acquire and renew
-- Returns 1 when the caller holds the lease afterwards (0 after release).

local key, holder, action, ttl_ms = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local current = redis.call('GET', key)
if action == 'release' then
  if current == holder then redis.call('DEL', key) end
  return 0
end
if current == holder or (not current and action == 'acquire') then
  redis.call('SET', key, holder, 'PX', ttl_ms)
  return 1
end
return 0
