-- common.lua: helpers shared by the scripts; scripts.py puts this text where a script
-- says "-- @include common". No KEYS or ARGV of its own.

local function split(text, sep)
  local out = {}
  if text and text ~= '' then
    for part in string.gmatch(text, '[^' .. sep .. ']+') do out[#out + 1] = part end
  end
  return out
end

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- a > b, comparing stream IDs as (ms, seq) integers, never as strings ("10-0" < "9-0")
local function id_after(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams > bms or (ams == bms and aseq > bseq)
end

-- Fencing: a worker applies only while it holds the role's lease. A worker that lost
-- its lease (paused, partitioned) is refused here, atomically with the batch, so two
-- workers never apply one cell's log at once.
local function holds_lease(lease_key, holder)
  return redis.call('GET', lease_key) == holder
end
