-- members.lua: renew (or end) a worker's membership of the namespace's shared workers
-- and return who is in, all by the Redis clock, so workers on hosts whose clocks
-- disagree still agree on who has gone silent.
--
-- KEYS[1] workers  sorted set: worker name -> Redis time (ms) its membership ends
--
-- ARGV[1] name     the worker's name
-- ARGV[2] ttl_ms   how long the membership lasts unless renewed; 0 leaves at once
-- Returns the members' names (by when they end), the caller included unless it left.

local workers, name, ttl_ms = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now_ms)
if ttl_ms > 0 then
  redis.call('ZADD', workers, now_ms + ttl_ms, name)
else
  redis.call('ZREM', workers, name)
end
return redis.call('ZRANGE', workers, 0, -1)
