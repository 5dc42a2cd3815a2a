-- common.lua: helpers shared by the scripts; scripts.py puts this text where a script
-- says "-- @include common". No KEYS or ARGV of its own.

-- The non-empty parts of `text` between occurrences of the one character `sep`.
-- (A plain find loop: a gmatch pattern built per call cost microseconds a decision.)
local function split(text, sep)
  local out = {}
  if not text then return out end
  local start = 1
  while true do
    local at = string.find(text, sep, start, true)
    if not at then
      if start <= #text then out[#out + 1] = string.sub(text, start) end
      return out
    end
    if at > start then out[#out + 1] = string.sub(text, start, at - 1) end
    start = at + 1
  end
end

-- Stream IDs here are as Redis writes them: ms-seq, decimal, no leading zeros. Plain
-- finds, not patterns: matching '^(%d+)-(%d+)$' took 1,800 instructions an ID.

-- A number Redis or this library wrote as decimal text, converted once: Lua 5.1's
-- tonumber checks that the text converts and then converts it again, two strtods
-- (about 1,000 instructions for a 13-digit time, callgrind). Raises on text that is
-- not a number, where tonumber would give nil: for fields known to hold one.
local function num(text)
  return text + 0
end

-- An ID's ms and seq as numbers, and its ms as written.
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  local ms = string.sub(id, 1, dash - 1)
  return num(ms), num(string.sub(id, dash + 1)), ms
end

-- An integer as text, for a redis.call argument: Redis 7.0 writes a number argument
-- with %.17g, printf's float path, at 2,600 instructions each (callgrind), which was a
-- tenth of a decision's cost while integers went as numbers.
local function int_text(n)
  return string.format('%d', n)
end

-- a > b, comparing stream IDs as (ms, seq) integers ("10-0" > "9-0", "1-10" > "1-9")
-- without parsing either (a 13-digit number costs strtod thousands of instructions): a
-- longer ms is larger; ms of one length compare as text, and when they are equal the
-- longer seq is larger, else the larger text.
local function id_after(a, b)
  local a_dash, b_dash = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  if a_dash ~= b_dash then return a_dash > b_dash end
  if #a == #b then return a > b end
  local a_ms, b_ms = string.sub(a, 1, a_dash), string.sub(b, 1, b_dash)
  if a_ms ~= b_ms then return a_ms > b_ms end
  return #a > #b
end

-- Whether the consumer group `group` of `stream` has been handed every entry and has
-- acknowledged each (so the projection it feeds has applied them all: a batch is
-- acknowledged in the call that applies it), all but the `added` entries this call has
-- just appended (default 0); and its entries-read (false when Redis does not know it).
-- XINFO GROUPS, not the newest entry: its reply stays small however large the entries
-- are. A lag Redis does not know counts as not caught up.
local function caught_up_group(stream, group, added)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if groups.err then return false, false end -- no stream yet, or flushed
  for _, found in ipairs(groups) do
    -- by name, in whatever order: no table of the fields (growing one cost more than
    -- the command)
    local name, pending, lag, entries_read
    for i = 1, #found, 2 do
      local field = found[i]
      if field == 'name' then name = found[i + 1]
      elseif field == 'pending' then pending = found[i + 1]
      elseif field == 'lag' then lag = found[i + 1]
      elseif field == 'entries-read' then entries_read = found[i + 1] end
    end
    if name == group then return lag == (added or 0) and pending == 0, entries_read end
  end
  return false, false
end

-- Move a consumer group to `id`, past entries applied in this call rather than read
-- through it, with its entries-read `entries_read` (false: unknown, so counted from the
-- stream, `unread` of its entries left after `id`): its lag stays exact. NOGROUP
-- (flushed) is left to the worker's reads, which make the group again.
local function move_group(stream, group, id, entries_read, unread)
  if not entries_read then
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'entries-added' then entries_read = info[i + 1] - unread end
    end
  end
  redis.pcall('XGROUP', 'SETID', stream, group, id, 'ENTRIESREAD', entries_read)
end

-- Fencing: a worker applies only while it holds the role's lease. A worker that lost
-- its lease (paused, partitioned) is refused here, atomically with the batch, so two
-- workers never apply one cell's log at once.
local function holds_lease(lease_key, holder)
  return redis.call('GET', lease_key) == holder
end

-- The batch: entries in ID order; each one after the tracking marker is applied, the
-- others (already applied, redelivered) are skipped; then the marker is written and
-- every entry acknowledged, in this same call. ARGV[pos] is the ID the marker must have
-- reached first ('' for none): a worker sends a batch before the one ahead of it has
-- returned, and if that one failed, the marker falls short and this batch is refused
-- (returns nil) rather than applied past a gap. ARGV[pos + 1] is the entry count;
-- read_entry(pos) returns id, entry and the next position in ARGV; apply_entry(id,
-- entry) applies one.
-- An entry whose apply raises (a case no check foresaw) stops the batch there: the
-- entries before it keep their effects, the marker and the acknowledgements; its own
-- writes up to the error stay too (Redis does not roll a script back). The third and
-- fourth results are then its ID and the error, so the worker can dead-letter it.
local function run_batch(meta, marker_field, stream, group, pos, read_entry, apply_entry)
  local applied = redis.call('HGET', meta, marker_field) or '0-0'
  if ARGV[pos] ~= '' and id_after(ARGV[pos], applied) then return nil end
  local count = tonumber(ARGV[pos + 1])
  pos = pos + 2
  local ids, done, skipped = {}, 0, 0
  local failed_id, failure
  for _ = 1, count do
    local id, entry
    id, entry, pos = read_entry(pos)
    if id_after(id, applied) then
      local ok, err = pcall(apply_entry, id, entry)
      if not ok then
        failed_id = id
        failure = type(err) == 'table' and tostring(err.err) or tostring(err)
        break
      end
      applied = id
      done = done + 1
    else
      skipped = skipped + 1
    end
    ids[#ids + 1] = id
  end
  redis.call('HSET', meta, marker_field, applied)
  if #ids > 0 then redis.call('XACK', stream, group, unpack(ids)) end
  return done, skipped, failed_id, failure
end
