-- requeue.lua: append a dead letter's original fields to the log again, byte for byte,
-- and note where it went. The dead letter itself stays: applying the log makes it, so a
-- rebuild makes it again, and verify compares like with like.
--
-- KEYS[1] dlq       the cell's dead-letter stream
-- KEYS[2] log       the cell's event stream
-- KEYS[3] requeued  hash: dead-letter ID -> the log ID it was requeued as
--
-- ARGV[1] the dead letter's ID
-- Returns {1, new_log_id}, or {0, why, detail} when it cannot be requeued.

local dlq, log, requeued = KEYS[1], KEYS[2], KEYS[3]
local dlq_id = ARGV[1]
local found = redis.call('XRANGE', dlq, dlq_id, dlq_id)
if not found[1] then return {0, 'missing', ''} end
local already = redis.call('HGET', requeued, dlq_id)
if already then return {0, 'requeued', already} end
local fields, cut = {}, nil
local flat = found[1][2]
for i = 1, #flat, 2 do
  if flat[i] == 'cut' then cut = flat[i + 1] end
  if string.sub(flat[i], 1, 2) == 'f:' then
    fields[#fields + 1] = string.sub(flat[i], 3)
    fields[#fields + 1] = flat[i + 1]
  end
end
if cut then return {0, 'cut', cut} end
if #fields == 0 then return {0, 'empty', ''} end
local new_id = redis.call('XADD', log, '*', unpack(fields))
redis.call('HSET', requeued, dlq_id, new_id)
return {1, new_id}
