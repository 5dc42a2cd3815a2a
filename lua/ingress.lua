-- ingress.lua: admitting entries from confined principals' ingress streams, and a
-- trusted producer's appends; apply.lua includes it after its handlers (it uses
-- read_entry, apply_entry, the K_ keys, GROUP, MODE, P, S_INGRESS, S_INBOX and
-- INBOX_GROUP from there). No KEYS or ARGV of its own.

local WAKE_TTL_MS = 600000 -- a wake stream whose reader went away goes after this

-- Ingress: entries a worker took from principals' ingress streams, each with the fields
-- the log gets (the source stamped, see dispatch/ingress.py). An entry is admitted once:
-- deleting it from its ingress says it was still there. It is appended to the log with
-- a server-assigned ID (no ID a client chose reaches the log) and, when nothing else in
-- the log waits to be applied, applied at that ID in this same call, the log group
-- moved past it. Otherwise it waits in the log behind what is there, and the group
-- delivers it in order; so the log stays the one ordered input either way.
-- Append mode is the same for a trusted producer's events (source ''): nothing to
-- delete, and applied at once only while a worker holds the dispatch role (a cell
-- nobody works decides nothing until someone does). An entry whose apply raises is
-- left waiting there: the worker meets it in the log and dead-letters it.
-- Nothing waits in the log when its consumer group has been handed and has acknowledged
-- every entry. `applied` is the marker as the call found it, `worked` whether a worker
-- holds the role; the marker to write comes back second to last (the caller writes
-- meta once).
local function run_ingress(pos, applied, worked)
  local trusted = ARGV[MODE] == 'append'
  local caught_up, entries_read = false, false
  if worked or not trusted then caught_up, entries_read = caught_up_group(K_LOG, GROUP) end
  local count = tonumber(ARGV[pos])
  pos = pos + 1
  local done, skipped, waiting, failed_id, failure, decided = 0, 0, 0, nil, nil, 0
  local appended = {}
  for _ = 1, count do
    local source, nlog = ARGV[pos], tonumber(ARGV[pos + 1])
    local log_first = pos + 2 -- the fields the log gets: nlog of them from here
    local ingress_id, entry, id
    ingress_id, entry, pos = read_entry(pos + 2 + nlog)
    if not trusted and redis.call('XDEL', P .. S_INGRESS .. source, ingress_id) == 0 then
      skipped = skipped + 1 -- admitted before
    else
      id = redis.call('XADD', K_LOG, '*', unpack(ARGV, log_first, log_first + nlog - 1))
      appended[#appended + 1] = id
      if caught_up then
        local ok, err = pcall(apply_entry, id, entry)
        if ok then
          applied, done = id, done + 1
          if entry.kind == 'fin' then decided = decided + 1 end
        elseif trusted then
          caught_up = false -- the worker's to dead-letter
        else
          failed_id = id
          failure = type(err) == 'table' and tostring(err.err) or tostring(err)
          caught_up = false
        end
      end
      if not caught_up then waiting = waiting + 1 end
    end
  end
  if done > 0 then
    move_group(K_LOG, GROUP, applied, entries_read and entries_read + done, waiting)
    if trusted and decided > 0 then redis.call('HINCRBY', K_STATS, 'fin_at_append', decided) end
  end
  -- A node's result acknowledges its inbox entry in the same call, so a job is never
  -- acknowledged without its result ('ack <node> <inbox id>'; NOGROUP, the cell lost
  -- the node, is ignored). A gateway's finalize rings its reader's wake stream ('wake
  -- <key>', keys.py CellKeys.wake: the cell's slot), so that read names the session.
  local also = trusted and ARGV[MODE + 1] or ''
  local node_id, inbox_id = string.match(also, '^ack (.+) (%S+)$')
  if node_id then redis.pcall('XACK', P .. S_INBOX .. node_id, INBOX_GROUP, inbox_id) end
  local wake = string.match(also, '^wake (.+)$')
  if wake then
    redis.call('XADD', wake, 'MAXLEN', 1, '*', 'w', 1)
    redis.call('PEXPIRE', wake, WAKE_TTL_MS)
  end
  return done, skipped, failed_id, failure, waiting, applied, appended
end
