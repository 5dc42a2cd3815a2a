-- records.lua: some fields of a page of one cell's node or session records, for the
-- statistics window's picture of the cell (projections/stats.py cell_shape). A page a
-- call, so that one call holds Redis briefly however large the cell, and one reply a
-- page rather than a command a record (redis-py's pipeline spent most of a publish's
-- 700 ms on 20,000 HMGETs at 10,000 nodes and sessions). Nothing is written.
--
-- KEYS[1] nodes   sorted set: every node id ever registered (node pages walk it by rank)
--
-- ARGV[1] the cell prefix, e.g. "es:{c0}:"; the records' keys are built from it and
--         share the cell's hash tag, so this reads one cluster slot
-- ARGV[2] 'node:' (a page of the nodes set, from a rank) or 'sess:' (a page of a SCAN
--         of the session records, from its cursor); keys.py SUFFIXES holds both
-- ARGV[3] where the page starts: a rank or a cursor, '0' for the first page
-- ARGV[4] how many records a page reads (for sessions, SCAN's COUNT: about that many)
-- ARGV[5..] the fields to read
-- Returns {where the next page starts, '0' after the last; then each record's fields in
-- order, '' for one it lacks}; a record that lacks every field is left out.

local S_NODE = 'node:' -- keys.py SUFFIXES holds the same string (tested)

local prefix, suffix, start, page = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local fields = {unpack(ARGV, 5)}

local names, next_start = {}, '0'
if suffix == S_NODE then
  local first = tonumber(start)
  local ids = redis.call('ZRANGE', KEYS[1], first, first + page - 1)
  for i, node_id in ipairs(ids) do names[i] = prefix .. suffix .. node_id end
  if #ids == page then next_start = tostring(first + page) end
else
  local found = redis.call('SCAN', start, 'MATCH', prefix .. suffix .. '*', 'COUNT', page)
  next_start, names = found[1], found[2]
end

local out = {next_start}
for _, name in ipairs(names) do
  local values = redis.call('HMGET', name, unpack(fields))
  local any = false
  for i = 1, #fields do
    if values[i] then any = true else values[i] = '' end
  end
  if any then
    for i = 1, #fields do out[#out + 1] = values[i] end
  end
end
return out
