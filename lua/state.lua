-- state.lua: read every projection key of one cell at one point of its log, in one
-- atomic call: the consistent state behind checkpoints, verify and replay goldens
-- (projections/cell_state.py). Nothing is written.
--
-- KEYS[1] meta       hash: the tracking markers, read with the keys they describe
-- KEYS[2] decisions  stream: its newest ID says whether the groups projection lags
--
-- ARGV[1] the cell's key pattern (SCAN MATCH); every key it matches shares the cell's
--         hash tag, so this reads one cluster slot, though it declares only two keys
-- ARGV[2] '1' to read stream entries as well, '0' to leave streams out (checkpoints:
--         history, not state, and what would make a read grow with the run)
-- ARGV[3] a prefix of names not to read (the leases)
-- ARGV[4..] names not to read (the log, checkpoints, statistics, operator bookkeeping)
-- Returns {applied, groups_applied, newest decision ID ('' for none), then per key
-- {name, type, value}}: hash and zset values flat (member, score as text), a set's
-- members, a stream's entries as XRANGE gives them, a string as it is.

local pattern, with_streams, skip_prefix = ARGV[1], ARGV[2] == '1', ARGV[3]
local skipped = {}
for i = 4, #ARGV do skipped[ARGV[i]] = true end

local names, cursor = {}, '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
  cursor = page[1]
  for _, name in ipairs(page[2]) do
    if not skipped[name] and string.sub(name, 1, #skip_prefix) ~= skip_prefix then
      names[#names + 1] = name
    end
  end
until cursor == '0'
table.sort(names)

local markers = redis.call('HMGET', KEYS[1], 'applied', 'groups_applied')
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local out = {markers[1] or '', markers[2] or '', newest and newest[1] or ''}
for _, name in ipairs(names) do
  local kind = redis.call('TYPE', name)['ok']
  local value
  if kind == 'hash' then
    value = redis.call('HGETALL', name)
  elseif kind == 'zset' then
    value = redis.call('ZRANGE', name, 0, -1, 'WITHSCORES')
  elseif kind == 'set' then
    value = redis.call('SMEMBERS', name)
  elseif kind == 'stream' and with_streams then
    value = redis.call('XRANGE', name, '-', '+')
  elseif kind == 'string' then
    value = redis.call('GET', name)
  end
  if value then out[#out + 1] = {name, kind, value} end
end
return out
