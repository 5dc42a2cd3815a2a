-- queue.lua: the bounded wait for a slot, included by apply.lua after start_attempt,
-- job_context, finished and reject; no KEYS or ARGV of its own, never run alone.
--
-- A finalize, or a retry, that finds no free slot for its language pair waits in the
-- pair's queue, q:<pair> (sorted set: job id -> class * 2^52 + the ms it began waiting;
-- class 0 for retries of jobs that started, 1 for first attempts, so retries go first
-- and each class oldest first), for QUEUE_WAIT_MS at most (K_WAITS: job id -> when its
-- wait ends) and QUEUE_MAX per pair (K_QUEUED: pair -> how many wait). The session's
-- waiting indexes are in qs:<sid>, so that closing it ends them. Whatever may have made
-- a slot usable (a release, a node joining its pools or beating again after a silence:
-- pools.lua's capacity_changed) serves the queues of that node's pairs once the entry
-- is applied, and every tick serves them all (freshness, quarantines and windows end
-- with time alone): the best waiting job is placed by place(), as any finalize is.

local CLASS = 4503599627370496 -- 2^52: above every ms until the year 142,000
local SERVE_MAX = 64 -- placements one serve makes at most (a tick serves the rest)
local QUEUE_LOOK = 8 -- waiting jobs looked at when the head is a retry kept off a node
local SERVE_ALL_AFTER = 16 -- more nodes changed than this: serve every queue instead

-- Whether no job waits in any queue, as far as this call knows (nil: not asked since
-- the call began or a queue shrank), so that a batch asks once rather than at every
-- finalize and release. begin() sets it nil at each call's start.
local nothing_queued
local function queue_empty()
  if nothing_queued == nil then nothing_queued = redis.call('HLEN', K_QUEUED) == 0 end
  return nothing_queued
end

-- Wait for a slot. `job` is as start_attempt takes it, `attempt` the attempt waiting,
-- `exclude` the node a retry keeps off, `err` what ended the attempt before it; `extra`
-- more job-record fields. Returns nil and the reason when it may not wait.
local function enqueue(job, attempt, exclude, err, extra)
  if QUEUE_WAIT_MS == 0 then return nil, 'no_capacity' end
  local pair = job.src .. '>' .. job.tgt
  if tonumber(redis.call('HGET', K_QUEUED, pair) or 0) >= QUEUE_MAX then
    return nil, 'queue_full'
  end
  redis.call('ZADD', P .. S_QUEUE .. pair, (attempt == 1 and CLASS or 0) + now_ms, job.id)
  redis.call('HINCRBY', K_QUEUED, pair, 1)
  nothing_queued = false
  local until_ms = now_ms + QUEUE_WAIT_MS
  redis.call('ZADD', K_WAITS, until_ms, job.id)
  redis.call('ZADD', P .. S_QSESS .. job.sid, job.idx, job.idx)
  touch(job.sid)
  local fields = {P .. S_JOB .. job.id, 'st', 'wait', 'qatt', attempt, 'qat', now_ms,
                  'excl', exclude, 'qerr', err}
  for _, value in ipairs(extra or {}) do fields[#fields + 1] = value end
  redis.call('HSET', unpack(fields))
  decide('k', 'w', 'job', job.id, 'att', attempt, 'sid', job.sid, 'idx', job.idx,
    'pair', pair, 'until', until_ms, 'at', now_id)
  return true
end

local function leave_queue(job)
  local pair = job.src .. '>' .. job.tgt
  redis.call('ZREM', P .. S_QUEUE .. pair, job.id)
  if redis.call('HINCRBY', K_QUEUED, pair, -1) <= 0 then redis.call('HDEL', K_QUEUED, pair) end
  nothing_queued = nil
  redis.call('ZREM', K_WAITS, job.id)
  redis.call('ZREM', P .. S_QSESS .. job.sid, job.idx)
end

-- A waiting job that gets no slot (its wait ended, its session closed): a first
-- attempt is rejected, a retry fails, with `reason`.
local function give_up(job_id, reason)
  local job, j = job_context(job_id, 'qatt', 'qerr', 'att', 'node')
  local jk = P .. S_JOB .. job_id
  leave_queue(job)
  if j[1] == '1' then
    redis.call('DEL', jk)
    reject(job.sid, job.idx, job.cut, reason)
    return
  end
  redis.call('HSET', jk, 'st', 'failed')
  redis.call('HDEL', jk, 'qatt', 'excl', 'qerr')
  finished(job_id, job.sid)
  decide('k', 'f', 'job', job_id, 'att', j[3], 'node', j[4], 'sid', job.sid, 'idx', job.idx,
    'cut', job.cut, 'reason', reason, 'err', j[2], 'at', now_id)
end

-- Place one waiting job now if any node may take it: 'placed' when it was, 'ended' when
-- its wait ended before a tick saw it (given up as the tick would), else nil and the
-- node it is kept off ('' for none).
local function try_waiting(job_id)
  if tonumber(redis.call('ZSCORE', K_WAITS, job_id)) < now_ms then
    give_up(job_id, 'queue_timeout')
    return 'ended'
  end
  local jk = P .. S_JOB .. job_id
  local job, j = job_context(job_id, 'qatt', 'excl', 'qat')
  local waited = now_ms - tonumber(j[3])
  local placed, pool = start_attempt(job, tonumber(j[1]), j[2], {'waited', waited},
    {'pair', job.src .. '>' .. job.tgt, 'waited', waited})
  if not placed then return nil, j[2] end
  leave_queue(job)
  redis.call('HDEL', jk, 'qatt', 'excl', 'qerr')
  if pool ~= job.pool then redis.call('HSET', P .. S_SESS .. job.sid, 'pool', pool) end
  return 'placed'
end

-- Serve the queues of `pairs` (sorted): the best head of them all first, again and again
-- while one can be placed. A head that cannot be placed leaves its pair out, unless it
-- is a retry kept off the node that failed it: then the next few of that pair are tried.
local function serve(pairs)
  local open = {}
  for _, pair in ipairs(pairs) do open[#open + 1] = pair end
  local served = 0
  while #open > 0 and served < SERVE_MAX do
    local best, best_score, best_id
    local i = 1
    while i <= #open do
      local head = redis.call('ZRANGE', P .. S_QUEUE .. open[i], 0, 0, 'WITHSCORES')
      if not head[1] then
        table.remove(open, i)
      else
        local score = tonumber(head[2])
        if not best or score < best_score or (score == best_score and head[1] < best_id) then
          best, best_score, best_id = i, score, head[1]
        end
        i = i + 1
      end
    end
    if not best then return end
    local outcome, kept_off
    for _, job_id in ipairs(redis.call('ZRANGE', P .. S_QUEUE .. open[best], 0, QUEUE_LOOK - 1)) do
      outcome, kept_off = try_waiting(job_id)
      if outcome or kept_off == '' then break end
    end
    if outcome then served = served + 1 else table.remove(open, best) end
  end
end

local function serve_all()
  local pairs = redis.call('HKEYS', K_QUEUED)
  table.sort(pairs)
  serve(pairs)
end

-- After an entry: serve the pairs of the nodes whose capacity changed, if anything waits.
local function serve_changed()
  local nodes = changed_nodes
  changed_nodes = {}
  if queue_empty() then return end
  if #nodes > SERVE_ALL_AFTER then return serve_all() end
  local seen, pairs = {}, {}
  for _, node_id in ipairs(nodes) do
    for _, pair in ipairs(node_pairs(redis.call('HGET', P .. S_NODE .. node_id, 'pairs'))) do
      if not seen[pair] then
        seen[pair] = true
        pairs[#pairs + 1] = pair
      end
    end
  end
  if #pairs == 0 then return end
  local counts = redis.call('HMGET', K_QUEUED, unpack(pairs))
  local waiting = {}
  for i, pair in ipairs(pairs) do
    if counts[i] then waiting[#waiting + 1] = pair end
  end
  table.sort(waiting)
  serve(waiting)
end

-- A tick: waits that ended are given up (at most TICK_JOBS a tick), then every queue is
-- served.
local function tick_queues()
  for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', K_WAITS, '-inf',
      string.format('(%d', now_ms), 'LIMIT', 0, TICK_JOBS)) do
    give_up(job_id, 'queue_timeout')
  end
  if not queue_empty() then serve_all() end
end

-- A closed session's waiting jobs end now.
local function close_waiting(session_id)
  for _, index in ipairs(redis.call('ZRANGE', P .. S_QSESS .. session_id, 0, -1)) do
    give_up(session_id .. ':' .. index, 'session_closed')
  end
end
