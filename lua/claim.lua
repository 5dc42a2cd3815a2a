-- claim.lua: on taking over a role, move every pending entry of the stream's group to
-- the new holder, and dead-letter the pending entries that were deleted (trimmed)
-- before anyone applied them, so none is lost silently. One page per call.
--
-- KEYS[1] stream   the log (or decisions) stream
-- KEYS[2] dlq      the cell's dead-letter stream
-- KEYS[3] lease    the role's lease; refused unless ARGV[2] holds it
-- KEYS[4] meta     the cell's meta hash: dlq_trimmed counts dead letters the cap dropped
--
-- ARGV[1] group    consumer group
-- ARGV[2] holder   the new holder (also the consumer name)
-- ARGV[3] cursor   XAUTOCLAIM start ID ("0-0" first)
-- ARGV[4] count    page size
-- Returns {next_cursor, claimed, dead_lettered}, or {-1} when the lease is not held.

-- @include common

local stream, dlq, lease, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local DLQ_MAX_LEN = 10000 -- as in apply.lua and model/limits.py (tested)
local group, holder, cursor, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if not holds_lease(lease, holder) then return {-1} end
local reply = redis.call('XAUTOCLAIM', stream, group, holder, 0, cursor, 'COUNT', count)
local deleted = reply[3] or {}
for _, id in ipairs(deleted) do
  if redis.call('XLEN', dlq) >= DLQ_MAX_LEN then
    redis.call('HINCRBY', meta, 'dlq_trimmed', 1)
  end
  redis.call('XADD', dlq, 'MAXLEN', DLQ_MAX_LEN, '*',
    'reason', 'entry_deleted: trimmed before it was applied', 'log_id', id, 'stream', stream)
end
return {reply[1], #reply[2], #deleted}
