-- apply.lua: apply a batch of one cell's log entries, in log order, all or nothing:
-- the dispatch projection. A Redis Functions library with one function, called with
-- FCALL (store/scripts.py loads it, named after its text, when Redis does not have it).
--
-- Folds node and pool events into the snapshot (node records, pool sorted sets by
-- load, language index), makes the dispatch decision for every finalize, releases
-- slots and retries on results, and on ticks enforces job deadlines and node liveness.
-- Every decision is appended to the decisions stream, from which groups.lua builds the
-- sessions' ordered outputs; when that projection is caught up, this call folds its own
-- decisions there too (fold_made), so an outcome reaches its session with no worker
-- between. Then it writes the tracking marker and XACKs the batch.
-- Time is the log: `now` is the millisecond part of the entry being applied; nothing
-- here reads a clock or a random number, and no table with string keys is iterated,
-- so the same log gives the same bytes on every Redis.
--
-- KEYS[1] log             the cell's event stream (XACK target)
-- KEYS[2] meta            hash: applied (tracking marker, last applied ID), mode
-- KEYS[3] decisions       stream: d dispatch, x reject, r release, f failed, o ok,
--                         l node lost, m model-not-available window opened,
--                         n notice (a finalize the cell cannot take: the gateway is told),
--                         e session ended (expired: groups.lua removes its outputs),
--                         q node quarantined (its jobs timed out again and again),
--                         w waiting for a slot (queue.lua), c settings changed
--                         (group_max_utterances, for groups.lua)
-- KEYS[4] dlq             stream: dead letters, reason + log_id + f:<field> copies
--                         (bounded: + cut when short), at most DLQ_MAX_LEN
-- KEYS[5] pools           hash: pool name -> "order|lang,lang"
-- KEYS[6] lang_index      hash: "src>tgt" -> pool,pool (fallback order)
-- KEYS[7] nodes           sorted set: every node id, score 0
-- KEYS[8] deadlines       sorted set: running job id -> deadline ms
-- KEYS[9] alive           sorted set: node id -> last heartbeat ms (nodes not lost)
-- KEYS[10] dispatch_lease the role's lease; the batch is refused unless ARGV[3] holds it
-- KEYS[11] idle           sorted set: session id -> its last activity ms (expiry on)
-- KEYS[12] ended          sorted set: finished job id -> when it finished ms (expiry on)
-- KEYS[13] settings       hash: the settings settings_changed events set, by name, and
--                         since (the log ID of the latest change)
-- KEYS[14] queued         hash: language pair -> how many jobs wait in its queue
-- KEYS[15] waits          sorted set: waiting job id -> when its wait ends ms
-- KEYS[16] stats          hash: statistics; append mode counts there the finalizes it
--                         decided (fin_at_append), which waited for no worker
-- KEYS[17] groups_lease   the group-state role's lease: decisions are folded here only
--                         while some worker holds it
--
-- ARGV[1]  cell prefix, e.g. "es:{c0}:"; per-node/session keys are built from it and
--          share the cell's hash tag
-- ARGV[2]  consumer group to XACK
-- ARGV[3]  holder (worker name; '' in append mode)
-- ARGV[4]  the defaults, space-separated: of the settings the settings hash does not
--          hold (the log never changed them), in the order of SETTING_NAMES below,
--          then group_max_utterances's (until a c decision changes it)
-- ARGV[5]  where the entries come from: 'log' (read from the log's group),
--          'ingress' (read from principals' ingress streams, see run_ingress) or
--          'append' (a trusted producer's own events, see run_ingress)
-- ARGV[6]  log: the ID the tracking marker must have reached ('' for none; see
--          run_batch); ingress: unused; append: '' or what the same call does besides
--          (run_ingress): 'ack <node> <inbox id>' or 'wake <key>'
-- ARGV[7]  entry count, then per entry: id, type, field count, fields...
--          ingress: per entry the source (node:n1), the count of the fields the log
--          gets, those fields, then as above with the entry's ingress ID as its id;
--          append: as ingress, with source and id ''
--   reg   node max_concurrency pool_langs pairs gpu (pairs as the node record keeps
--         them: '*,de,en,' every ordered pair of those languages, or ',de>en,')
--   hb    node cpu_pct gpu_pct ('' without a GPU) mem_pct running_count
--   drain node            undrain node          dereg node            tick (no fields)
--   pools count, then per pool: name order langs
--   open  session src tgt
--   fin   session index cut audio_ref duration_ms
--   res   job attempt node ok error asr nmt tts tts_ms timings_json
--   close session
--   set   count, then per setting changed: name value (sorted by name)
--   bad   reason nfields nbytes, then the first field name/value pairs (bounded)
-- Returns {applied, skipped_as_already_applied, dead_lettered, appended_unapplied,
-- the log IDs appended (ingress and append modes)},
-- {-1} when the lease is not held, {-2} when the marker falls short of ARGV[6], or
-- {-3, id, error} when the entry `id` raised (the entries before it applied; see
-- run_batch).

-- A library (FUNCTION LOAD, store/scripts.py): everything above `apply` at the bottom
-- is made once, when the library loads, so a call pays only for what it applies (as a
-- script, making its 70 functions cost every call about as much as a heartbeat's fold,
-- bench/dispatch_scale.py). What a call may change lives in the locals below and is set
-- afresh at its start (`begin`, `reset_pools`): nothing of one call reaches the next.
local KEYS, ARGV = {}, {}

-- @include common

local K_LOG, K_META, K_DEC, K_DLQ, K_POOLS, K_LIDX, K_NODES, K_DEADLINES, K_ALIVE, K_LEASE
local K_IDLE, K_ENDED, K_SETTINGS, K_QUEUED, K_WAITS, K_STATS
local P, GROUP, HOLDER
local MODE = 5 -- ARGV position of the mode, after the defaults (tested)

-- The settings in force: the cell's settings hash over the defaults in ARGV[4], in
-- this order (settings.py as_argv, tested). A settings_changed entry changes them for
-- the entries after it in this same call (handlers.set), so a batch of any size
-- decides as one entry at a time would.
local SETTING_NAMES = {'rate_per_s', 'rate_burst', 'max_attempts', 'job_timeout_ms',
  'heartbeat_fresh_ms', 'node_lost_ms', 'unavailable_window_ms', 'cpu_max_pct',
  'gpu_max_pct', 'mem_max_pct', 'scan_limit', 'expire_after_ms',
  'quarantine_after_timeouts', 'quarantine_ms', 'queue_wait_ms', 'queue_max'}
local in_force = {}
local RATE, BURST, MAX_ATTEMPTS, TIMEOUT_MS, FRESH_MS, LOST_MS, UNAVAILABLE_MS
local CPU_MAX, GPU_MAX, MEM_MAX, SCAN_LIMIT, EXPIRE_MS, QUARANTINE_AFTER, QUARANTINE_MS
local QUEUE_WAIT_MS, QUEUE_MAX

local function use_settings()
  local s = in_force
  RATE, BURST, MAX_ATTEMPTS, TIMEOUT_MS = s.rate_per_s, s.rate_burst, s.max_attempts,
    s.job_timeout_ms
  FRESH_MS, LOST_MS, UNAVAILABLE_MS = s.heartbeat_fresh_ms, s.node_lost_ms,
    s.unavailable_window_ms
  CPU_MAX, GPU_MAX, MEM_MAX, SCAN_LIMIT = s.cpu_max_pct, s.gpu_max_pct, s.mem_max_pct,
    s.scan_limit
  EXPIRE_MS, QUARANTINE_AFTER, QUARANTINE_MS = s.expire_after_ms,
    s.quarantine_after_timeouts, s.quarantine_ms
  QUEUE_WAIT_MS, QUEUE_MAX = s.queue_wait_ms, s.queue_max
end

-- What in_force was last made from (kept from call to call: reading and converting the
-- 16 settings cost a finalize's call an eighth of its instructions, callgrind): the
-- cell's settings hash, its `since`, and the defaults. Only handlers.set writes that
-- hash, and it moves `since` (it runs in this library, so in_force is already its own).
local made_from_key, made_from_since, made_from_defaults = nil, nil, nil
local default_group_max -- the last of the defaults, for fold_made

local function load_settings()
  local since = redis.call('HGET', K_SETTINGS, 'since') or ''
  if made_from_key == K_SETTINGS and made_from_since == since
      and made_from_defaults == ARGV[4] then
    use_settings()
    return
  end
  in_force = {}
  local defaults = split(ARGV[4], ' ')
  local stored = redis.call('HMGET', K_SETTINGS, unpack(SETTING_NAMES))
  for i, name in ipairs(SETTING_NAMES) do
    in_force[name] = tonumber(stored[i] or defaults[i])
  end
  default_group_max = defaults[#SETTING_NAMES + 1]
  made_from_key, made_from_since, made_from_defaults = K_SETTINGS, since, ARGV[4]
  use_settings()
end

-- Work one tick may do, so a tick after a long silence cannot hold Redis for long;
-- what is left is done by the next ticks.
local TICK_NODES, TICK_JOBS, TICK_EXPIRED = 16, 64, 64

-- Key suffixes; keys.py SUFFIXES holds the same strings (tested).
local S_NODE, S_INBOX, S_NJOBS, S_POOL = 'node:', 'inbox:', 'njobs:', 'pool:'
local S_SESS, S_UTT, S_JOB, S_INGRESS = 'sess:', 'utt:', 'job:', 'in:'
local S_QUEUE, S_QSESS = 'q:', 'qs:'

local FULL = 1000 -- load score of a node with no free slot; pools are read below it
local BELOW_FULL = '(1000' -- ZRANGEBYSCORE's bound for below FULL, as text
local INBOX_GROUP = 'node' -- the consumer group a node reads its inbox through

local now_ms, now_seq, now_id, now_text = 0, 0, '', '0' -- now_text: now_ms as text
local decided = 0 -- decisions made for the entry being applied

-- Append a decision. Its ID is derived from the log entry that caused it (the j-th
-- decision of entry ms-seq is ms-(seq*2^20+j)), so the decisions stream is the same on
-- every backend and in every replay, and groups.lua's marker is too.
local made -- this call's decisions, {id, fields by name}, while they are to be folded
local function decide(...)
  local id = string.format('%d-%d', now_ms, now_seq * 1048576 + decided)
  decided = decided + 1
  redis.call('XADD', K_DEC, id, ...)
  if made then -- as a read of the stream gives it: numbers as text, as XADD wrote them
    local flat, fields = {...}, {}
    for i = 1, #flat, 2 do
      local value = flat[i + 1]
      fields[flat[i]] = type(value) == 'number' and string.format('%.17g', value) or value
    end
    made[#made + 1] = {id, fields}
  end
end

local dead_lettered = 0 -- in this call
-- model/limits.py holds the same numbers (tested): what a dead letter keeps of an
-- entry, and how many dead letters the stream keeps.
local DLQ_COPY_FIELDS, DLQ_COPY_BYTES, DLQ_MAX_LEN = 4, 4096, 10000

-- A dead letter: the reason, the log ID, and a bounded copy of the entry's field pairs
-- (`flat`: name, value, name, value...). The entry had `nfields` fields of `nbytes`
-- bytes in all; `cut` says so when the copy is short of that. The oldest dead letters
-- go when the stream is full, counted in meta's dlq_trimmed.
local function dead_letter(reason, nfields, nbytes, flat)
  dead_lettered = dead_lettered + 1
  local args = {K_DLQ, 'MAXLEN', DLQ_MAX_LEN, '*', 'reason', reason, 'log_id', now_id}
  local kept = 0
  for i = 1, math.min(#flat, 2 * DLQ_COPY_FIELDS), 2 do
    local name = string.sub(flat[i], 1, DLQ_COPY_BYTES)
    local value = string.sub(flat[i + 1], 1, DLQ_COPY_BYTES)
    kept = kept + #name + #value
    args[#args + 1] = 'f:' .. name
    args[#args + 1] = value
  end
  if kept < nbytes then
    args[#args + 1] = 'cut'
    args[#args + 1] = string.format('%d fields, %d bytes', nfields, nbytes)
  end
  if redis.call('XLEN', K_DLQ) >= DLQ_MAX_LEN then
    redis.call('HINCRBY', K_META, 'dlq_trimmed', 1)
  end
  redis.call('XADD', unpack(args))
end

-- The log entry's own fields, for dead letters found here rather than in Python.
local function dead_letter_entry(reason)
  local found = redis.call('XRANGE', K_LOG, now_id, now_id)
  local flat = found[1] and found[1][2] or {}
  local nbytes = 0
  for _, part in ipairs(flat) do nbytes = nbytes + #part end
  dead_letter(reason, #flat / 2, nbytes, flat)
end

-- @include pools

---------------------------------------------------------------- jobs

-- Try attempt `attempt` of a job: place it, reserve the slot, record it, hand it off.
-- `job` holds what the finalize said (id sid idx audio, as text) and the session (src
-- tgt pool); `extra` are more job-hash fields to write in the same HSET; `noted` more
-- fields of the dispatch decision (queue.lua: the pair and how long it waited).
local function start_attempt(job, attempt, exclude, extra, noted)
  local node_id, pool, node, why = place(job.src .. '>' .. job.tgt, job.pool, exclude)
  if not node_id then return nil, why end
  local running = redis.call('HINCRBY', P .. S_NODE .. node_id, 'run', '1')
  local score = int_text(load_score(running, tonumber(node[3])))
  for _, member_of in ipairs(split(node[4], ',')) do
    redis.call('ZADD', P .. S_POOL .. member_of, 'XX', score, node_id)
  end
  redis.call('SADD', P .. S_NJOBS .. node_id, job.id)
  local deadline = int_text(now_ms + TIMEOUT_MS)
  attempt = attempt == 1 and '1' or int_text(attempt)
  redis.call('ZADD', K_DEADLINES, deadline, job.id)
  local fields = {P .. S_JOB .. job.id, 'att', attempt, 'node', node_id, 'pool', pool,
                  'st', 'run', 'dl', deadline}
  for _, value in ipairs(extra or {}) do fields[#fields + 1] = value end
  redis.call('HSET', unpack(fields))
  redis.call('XADD', P .. S_INBOX .. node_id, '*', 'job', job.id, 'att', attempt,
    'sid', job.sid, 'idx', job.idx, 'src', job.src, 'tgt', job.tgt, 'audio', job.audio,
    'dl', deadline)
  local dispatched = {'k', 'd', 'job', job.id, 'att', attempt, 'node', node_id,
    'pool', pool, 'sid', job.sid, 'idx', job.idx}
  for _, value in ipairs(noted or {}) do dispatched[#dispatched + 1] = value end
  dispatched[#dispatched + 1] = 'at'
  dispatched[#dispatched + 1] = now_id
  decide(unpack(dispatched))
  return node_id, pool
end

-- End of life, in event time (settings.expire_after_ms; 0 keeps everything): a job
-- record goes that long after the job finished (its session's utt hash keeps a note,
-- for repeats), a session that long after its last finalize, close, wait or job end. A
-- session never expires with a job running: the settings require expire_after_ms to
-- outlast every attempt's wait and deadline; nor with one waiting, however late ticks
-- come (queue.lua needs the session to place it).
local function touch(session_id)
  if EXPIRE_MS > 0 then redis.call('ZADD', K_IDLE, now_text, session_id) end
end

local function finished(job_id, session_id)
  if EXPIRE_MS > 0 then
    redis.call('ZADD', K_ENDED, now_text, job_id)
    touch(session_id)
  end
end

local function expire()
  local before = string.format('(%d', now_ms - EXPIRE_MS)
  for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', K_ENDED, '-inf', before,
      'LIMIT', 0, TICK_EXPIRED)) do
    local j = redis.call('HMGET', P .. S_JOB .. job_id, 'sid', 'idx')
    -- The session remembers the utterance had its job, so a repeat is still ignored.
    if j[1] and redis.call('EXISTS', P .. S_SESS .. j[1]) == 1 then
      redis.call('HSET', P .. S_UTT .. j[1], j[2], 'ended')
    end
    redis.call('DEL', P .. S_JOB .. job_id)
    redis.call('ZREM', K_ENDED, job_id)
  end
  for _, session_id in ipairs(redis.call('ZRANGEBYSCORE', K_IDLE, '-inf', before,
      'LIMIT', 0, TICK_EXPIRED)) do
    if redis.call('EXISTS', P .. S_QSESS .. session_id) == 1 then
      -- something of it still waits (ticks came too late to end it first): not idle
      touch(session_id)
    else
      redis.call('DEL', P .. S_SESS .. session_id, P .. S_UTT .. session_id)
      redis.call('ZREM', K_IDLE, session_id)
      decide('k', 'e', 'sid', session_id, 'at', now_id)
    end
  end
end

-- A job's context for a retry, read back from its record and its session.
-- More job-record fields named after `job_id` come back second, in one read with the rest.
local function job_context(job_id, ...)
  local j = redis.call('HMGET', P .. S_JOB .. job_id, 'sid', 'idx', 'audio', 'cut', ...)
  local s = redis.call('HMGET', P .. S_SESS .. j[1], 'src', 'tgt', 'pool')
  return {id = job_id, sid = j[1], idx = j[2], audio = j[3], cut = j[4], src = s[1],
          tgt = s[2], pool = s[3]}, {unpack(j, 5)}
end

local function reject(session_id, index, cut, reason)
  redis.call('HSET', P .. S_UTT .. session_id, index, 'rejected')
  decide('k', 'x', 'sid', session_id, 'idx', index, 'cut', cut,
    'reason', reason, 'at', now_id)
end

-- @include queue

-- Release the slot of a job's current attempt (as text) on its node and record why it
-- ended. `node_fields`: as release takes them, when the caller has read them.
local function end_attempt(job_id, attempt, node_id, ok, err, node_fields)
  release(node_id, job_id, node_fields)
  decide('k', 'r', 'job', job_id, 'att', attempt, 'node', node_id,
    'ok', ok and '1' or '0', 'err', err, 'at', now_id)
end

-- Move a job off a node that failed it: the next attempt elsewhere at once, or in its
-- queue when no slot is free, or, after max_attempts or with nowhere to go, a failure
-- (`exhausted` names why it gave up).
local function retry_or_fail(job_id, attempt, node_id, err, exhausted)
  local job = job_context(job_id)
  local reason = exhausted
  if attempt < MAX_ATTEMPTS then
    local placed, pool_or_why = start_attempt(job, attempt + 1, node_id)
    if placed then
      if pool_or_why ~= job.pool then
        redis.call('HSET', P .. S_SESS .. job.sid, 'pool', pool_or_why)
      end
      return
    end
    reason = pool_or_why
    if reason == 'no_capacity' then
      local waits, why = enqueue(job, attempt + 1, node_id, err)
      if waits then return end
      reason = why
    end
  end
  redis.call('HSET', P .. S_JOB .. job_id, 'st', 'failed')
  finished(job_id, job.sid)
  decide('k', 'f', 'job', job_id, 'att', attempt, 'node', node_id,
    'sid', job.sid, 'idx', job.idx, 'cut', job.cut, 'reason', reason, 'err', err,
    'at', now_id)
end

-- A node that left or was lost hands its running jobs on to others now.
local function move_jobs(node_id, err, exhausted)
  local jobs = redis.call('SMEMBERS', P .. S_NJOBS .. node_id)
  table.sort(jobs)
  for _, job_id in ipairs(jobs) do
    local attempt = redis.call('HGET', P .. S_JOB .. job_id, 'att')
    end_attempt(job_id, attempt, node_id, false, err)
    retry_or_fail(job_id, tonumber(attempt), node_id, err, exhausted)
  end
end

---------------------------------------------------------------- event handlers

local handlers = {}

function handlers.reg(f)
  local node_id, langs = f[1], f[3]
  local nk = P .. S_NODE .. node_id
  local old = redis.call('HMGET', nk, 'run', 'cpu', 'gpu', 'mem')
  leave_pools(node_id)
  redis.call('HDEL', nk, 'drained') -- registering again starts afresh
  redis.call('HSET', nk, 'mc', f[2], 'run', old[1] or '0', 'hb', now_text, 'st', 'up',
    'cpu', old[2] or '0', 'gpu', old[3] or '0', 'mem', old[4] or '0', 'langs', langs,
    'pairs', f[4], 'gpu_desc', f[5], 'inpool', '0')
  redis.call('ZADD', K_NODES, 0, node_id)
  redis.call('ZADD', K_ALIVE, now_text, node_id)
  -- The inbox is read through a consumer group, so a restarted node gets its
  -- unacknowledged jobs again. BUSYGROUP (already there) is expected.
  redis.pcall('XGROUP', 'CREATE', P .. S_INBOX .. node_id, INBOX_GROUP, '0', 'MKSTREAM')
  join_pools(node_id, langs)
end

-- A beat refreshes liveness; a lost node that beats again is offered work again
-- (unless it was draining when it went silent).
function handlers.hb(f)
  local nk = P .. S_NODE .. f[1]
  local old = redis.call('HMGET', nk, 'st', 'hb', 'inpool')
  local state = old[1]
  if not state then
    dead_letter_entry('unknown_node')
    return
  end
  -- a beat after a silence makes the node pickable again: queues may be served
  if now_ms - num(old[2]) > FRESH_MS then capacity_changed(f[1]) end
  if state == 'lost' then
    -- back as it was before it went silent: a node that was draining still drains
    state = redis.call('HGET', nk, 'drained') == '1' and 'drain' or 'up'
    redis.call('HDEL', nk, 'drained')
    redis.call('HSET', nk, 'hb', now_text, 'cpu', f[2], 'gpu', f[3], 'mem', f[4], 'nrun', f[5],
      'st', state)
  else
    redis.call('HSET', nk, 'hb', now_text, 'cpu', f[2], 'gpu', f[3], 'mem', f[4], 'nrun', f[5])
  end
  if state ~= 'gone' then redis.call('ZADD', K_ALIVE, now_text, f[1]) end
  -- Most beats leave the node in or out of its pools as it was: only a change reads the
  -- rest of the record (a read of all of it cost a beat a seventh of its instructions).
  if wanted_in_pools(state, f[2], f[3], f[4]) ~= (old[3] == '1') then
    sync_membership(f[1])
  end
end

local function set_state(node_id, state)
  local nk = P .. S_NODE .. node_id
  if redis.call('EXISTS', nk) == 0 then
    dead_letter_entry('unknown_node')
    return false
  end
  redis.call('HSET', nk, 'st', state)
  sync_membership(node_id)
  return true
end

function handlers.drain(f)
  set_state(f[1], 'drain')
end

-- A drain taken back: a draining node is offered work again; a lost one that was
-- draining comes back up when it beats again. Any other state stays as it is.
function handlers.undrain(f)
  local nk = P .. S_NODE .. f[1]
  local state = redis.call('HGET', nk, 'st')
  if not state then
    dead_letter_entry('unknown_node')
  elseif state == 'drain' then
    set_state(f[1], 'up')
  else
    redis.call('HDEL', nk, 'drained')
  end
end

function handlers.dereg(f)
  if not set_state(f[1], 'gone') then return end
  redis.call('ZREM', K_ALIVE, f[1])
  move_jobs(f[1], 'NODE_LEFT', 'node_left')
end

-- Time passed: nodes silent for node_lost_ms are lost (their jobs move now), and jobs
-- past their deadline are retried elsewhere or fail as timed_out.
-- A node whose jobs time out QUARANTINE_AFTER times in a row (a black hole: it takes
-- work and never answers) is offered nothing for QUARANTINE_MS; any answer from it
-- starts the count again. Its running jobs are left to their own deadlines.
local function strike(node_id)
  if QUARANTINE_AFTER == 0 then return end
  local nk = P .. S_NODE .. node_id
  if redis.call('HINCRBY', nk, 'strikes', 1) >= QUARANTINE_AFTER then
    redis.call('HSET', nk, 'strikes', 0, 'quar', now_ms + QUARANTINE_MS)
    decide('k', 'q', 'node', node_id, 'until', now_ms + QUARANTINE_MS, 'at', now_id)
  end
end

function handlers.tick()
  -- Numbers go into text with %d: Lua's own conversion keeps 14 digits, and event
  -- times have 13 now and 15 from the year 5138 (redis.call's arguments are exact).
  local silent = redis.call('ZRANGEBYSCORE', K_ALIVE, '-inf',
    string.format('(%d', now_ms - LOST_MS),
    'LIMIT', 0, TICK_NODES)
  for _, node_id in ipairs(silent) do
    redis.call('ZREM', K_ALIVE, node_id)
    if redis.call('HGET', P .. S_NODE .. node_id, 'st') == 'drain' then
      redis.call('HSET', P .. S_NODE .. node_id, 'drained', '1')
    end
    set_state(node_id, 'lost')
    decide('k', 'l', 'node', node_id, 'at', now_id)
    move_jobs(node_id, 'NODE_LOST', 'node_lost')
  end
  local late = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', string.format('(%d', now_ms),
    'LIMIT', 0, TICK_JOBS)
  for _, job_id in ipairs(late) do
    local j = redis.call('HMGET', P .. S_JOB .. job_id, 'att', 'node')
    end_attempt(job_id, j[1], j[2], false, 'TIMED_OUT')
    strike(j[2])
    retry_or_fail(job_id, tonumber(j[1]), j[2], 'TIMED_OUT', 'timed_out')
  end
  tick_queues()
  if EXPIRE_MS > 0 then expire() end
end

function handlers.pools(f)
  local count = tonumber(f[1])
  for _, name in ipairs(redis.call('HKEYS', K_POOLS)) do
    redis.call('DEL', P .. S_POOL .. name)
  end
  redis.call('DEL', K_POOLS, K_LIDX)
  listed_pools = {}
  local nodes = redis.call('ZRANGE', K_NODES, 0, -1)
  for _, node_id in ipairs(nodes) do
    redis.call('HSET', P .. S_NODE .. node_id, 'inpool', '0')
  end
  if count == 0 then
    redis.call('HSET', K_META, 'mode', 'auto')
  else
    redis.call('HSET', K_META, 'mode', 'configured')
    local defs = {}
    for i = 0, count - 1 do
      local name, order, langs = f[2 + i * 3], tonumber(f[3 + i * 3]), f[4 + i * 3]
      redis.call('HSET', K_POOLS, name, order .. '|' .. langs)
      defs[#defs + 1] = {name = name, order = order, langs = langs}
    end
    table.sort(defs, function(a, b)
      if a.order ~= b.order then return a.order < b.order end
      return a.name < b.name
    end)
    for _, def in ipairs(defs) do index_pool(def.name, def.langs, false) end
  end
  for _, node_id in ipairs(nodes) do
    join_pools(node_id, redis.call('HGET', P .. S_NODE .. node_id, 'langs'))
  end
end

function handlers.open(f)
  local sk = P .. S_SESS .. f[1]
  local s = redis.call('HMGET', sk, 'src', 'tgt')
  if s[1] then
    if s[1] ~= f[2] or s[2] ~= f[3] then dead_letter_entry('session_exists') end
    return
  end
  redis.call('HSET', sk, 'src', f[2], 'tgt', f[3], 'pool', '', 'closed', '0',
    'tb', BURST * 1000, 'tbt', now_ms, 'top', -1)
  touch(f[1])
end

-- A finalize that is no utterance of an open session: dead-lettered for the operator,
-- and noticed to the gateway through the session's output stream (groups.lua), which
-- is all a gateway reads: it opens the session again or gives the utterance up.
local function unserved(session_id, index, cut, reason)
  dead_letter_entry(reason)
  decide('k', 'n', 'sid', session_id, 'idx', index, 'cut', cut, 'reason', reason,
    'at', now_id)
end

function handlers.fin(f)
  local session_id, index, cut, index_text = f[1], tonumber(f[2]), f[3], f[2]
  local sk = P .. S_SESS .. session_id
  local s = redis.call('HMGET', sk, 'src', 'tgt', 'pool', 'closed', 'tb', 'tbt', 'top')
  if not s[1] then
    unserved(session_id, index_text, cut, 'unknown_session')
    return
  end
  -- step 1: a repeat (of a job: its record exists; of a rejection: noted in the utt
  -- hash) is ignored. An index at or below the session's last with neither is late:
  -- its first finalize was lost with writes Redis lost, and it is served now, its
  -- outcome delivered after the later ones (the session client puts it back in order).
  local top = tonumber(s[7])
  if index <= top and (redis.call('EXISTS', P .. S_JOB .. session_id .. ':' .. index) == 1
      or redis.call('HEXISTS', P .. S_UTT .. session_id, index) == 1) then
    return
  end
  if s[4] == '1' then
    unserved(session_id, index_text, cut, 'session_closed')
    return
  end
  touch(session_id)
  if index > top then top = index_text else top = s[7] end
  -- step 2: a token bucket in milli-tokens, refilled by event time
  local tokens = math.min(BURST * 1000, num(s[5]) + (now_ms - num(s[6])) * RATE)
  if tokens < 1000 then
    redis.call('HSET', sk, 'top', top)
    reject(session_id, index_text, cut, 'rate_limited')
    return
  end
  local job = {id = session_id .. ':' .. index_text, sid = session_id, idx = index_text,
               audio = f[4], src = s[1], tgt = s[2], pool = s[3]}
  local record = {'sid', session_id, 'idx', index_text, 'cut', cut, 'audio', f[4],
                  'dur', f[5], 'fin', now_id}
  -- steps 3-8, the finalize's own fields going into the same job record write; behind
  -- finalizes of its pair that wait, it waits too: first come, first served
  local pair = s[1] .. '>' .. s[2]
  local behind = QUEUE_WAIT_MS > 0 and not queue_empty()
    and redis.call('HEXISTS', K_QUEUED, pair) == 1
  local placed, pool_or_why = nil, 'no_capacity'
  if not behind then placed, pool_or_why = start_attempt(job, 1, '', record) end
  if placed and pool_or_why ~= s[3] then
    redis.call('HSET', sk, 'tb', tokens - 1000, 'tbt', now_text, 'top', top,
      'pool', pool_or_why)
  else
    redis.call('HSET', sk, 'tb', tokens - 1000, 'tbt', now_text, 'top', top)
  end
  if placed then return end
  if pool_or_why == 'no_capacity' then
    record[#record + 1] = 'att'
    record[#record + 1] = '0'
    local waits, why = enqueue(job, 1, '', '', record)
    if waits then
      if behind then serve({pair}) end
      return
    end
    pool_or_why = why
  end
  reject(session_id, index_text, cut, pool_or_why)
end

-- MODEL_NOT_AVAILABLE: the node is not offered this pair for a while (the seeds'
-- debounce). Only the first error of a window is recorded, so a storm makes one entry
-- (and one log line) per window, not one per job.
local function hold_off_pair(node_id, job_id)
  local job = job_context(job_id)
  local pair = job.src .. '>' .. job.tgt
  local nk = P .. S_NODE .. node_id
  local until_ms = tonumber(redis.call('HGET', nk, 'na:' .. pair) or 0)
  redis.call('HSET', nk, 'na:' .. pair, now_ms + UNAVAILABLE_MS)
  if until_ms <= now_ms then
    decide('k', 'm', 'node', node_id, 'pair', pair,
      'until', now_ms + UNAVAILABLE_MS, 'at', now_id)
  end
end

function handlers.res(f)
  local job_id, attempt, node_id, ok, err = f[1], tonumber(f[2]), f[3], f[4] == '1', f[5]
  local jk = P .. S_JOB .. job_id
  local j = redis.call('HMGET', jk, 'att', 'node', 'st', 'cut', 'sid', 'idx', 'fin')
  if not j[1] then
    dead_letter_entry('unknown_job')
    return
  end
  -- the node's record, read once for the checks here and the release (every record has
  -- mc: registering writes it)
  local n = redis.call('HMGET', P .. S_NODE .. node_id, 'mc', 'pools', 'inpool', 'strikes')
  if not n[1] then
    dead_letter_entry('unknown_node')
    return
  end
  local current = tonumber(j[1])
  if attempt < current then return end -- an old attempt's late answer: nothing changes
  if j[2] ~= node_id then
    dead_letter_entry('not_owner')
    return
  end
  if attempt > current then
    dead_letter_entry('unknown_attempt') -- never issued
    return
  end
  if j[3] ~= 'run' then return end -- a duplicate
  if QUARANTINE_AFTER > 0 and n[4] then -- an answer clears the node's timeouts
    redis.call('HDEL', P .. S_NODE .. node_id, 'strikes')
  end
  end_attempt(job_id, f[2], node_id, ok, err, n)
  if not ok then
    if err == 'MODEL_NOT_AVAILABLE' and UNAVAILABLE_MS > 0 then
      hold_off_pair(node_id, job_id)
    end
    retry_or_fail(job_id, attempt, node_id, err, 'retries_exhausted')
    return
  end
  redis.call('HSET', jk, 'st', 'done')
  finished(job_id, j[5])
  decide('k', 'o', 'job', job_id, 'att', f[2], 'node', node_id,
    'sid', j[5], 'idx', j[6], 'cut', j[4], 'asr', f[6], 'nmt', f[7], 'tts', f[8],
    'tts_ms', f[9], 'timings', f[10], 'fin', j[7], 'at', now_id)
end

function handlers.close(f)
  local sk = P .. S_SESS .. f[1]
  if redis.call('EXISTS', sk) == 0 then
    dead_letter_entry('unknown_session')
    return
  end
  redis.call('HSET', sk, 'closed', '1')
  close_waiting(f[1])
  touch(f[1])
end

-- Settings changed from here on. The event's values are in bounds (settings.py); the
-- rule between settings is checked on what they make with the ones in force, and a
-- change that breaks it is dead-lettered whole. A `c` decision carries
-- group_max_utterances to groups.lua, which reads the decisions stream only.
function handlers.set(f)
  local changed = {}
  for _, name in ipairs(SETTING_NAMES) do changed[name] = in_force[name] end
  for i = 2, 2 * tonumber(f[1]), 2 do changed[f[i]] = tonumber(f[i + 1]) end
  local least = 2 * changed.max_attempts * (changed.queue_wait_ms + changed.job_timeout_ms)
  if changed.expire_after_ms > 0 and changed.expire_after_ms < least then
    dead_letter_entry(string.format('settings_conflict: expire_after_ms must be 0 or at'
      .. ' least 2 x max_attempts x (queue_wait_ms + job_timeout_ms) (%d)', least))
    return
  end
  local write = {K_SETTINGS, 'since', now_id}
  local group_max
  for i = 2, 2 * tonumber(f[1]), 2 do
    write[#write + 1] = f[i]
    write[#write + 1] = f[i + 1]
    if f[i] == 'group_max_utterances' then group_max = f[i + 1] end
  end
  redis.call('HSET', unpack(write))
  in_force = changed
  use_settings()
  if group_max then decide('k', 'c', 'gmax', group_max, 'at', now_id) end
end

function handlers.bad(f)
  local original = {}
  for i = 4, #f do original[#original + 1] = f[i] end
  dead_letter(f[1], tonumber(f[2]), tonumber(f[3]), original)
end

---------------------------------------------------------------- the batch

-- An entry's fields: a table made from unpack is sized once (filled one by one, it grew
-- by doubling).
local function read_entry(pos)
  local id, kind, nfields = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  local fields = {unpack(ARGV, pos + 3, pos + 2 + nfields)}
  return id, {kind = kind, fields = fields}, pos + 3 + nfields
end

local function apply_entry(id, entry)
  now_id, decided = id, 0
  now_ms, now_seq, now_text = id_parts(id)
  handlers[entry.kind](entry.fields)
  if #changed_nodes > 0 then serve_changed() end
end

-- @include ingress

local GROUP_MAX, K_GROUPS_LEASE
local GROUPS_GROUP = 'groups' -- the group-state projection's consumer group (tested)

-- @include fold

-- Fold this call's decisions in order, as groups.lua would next, when nothing made
-- before them waits to be folded (the caller checked that some worker holds that role),
-- and move that projection's consumer group past them; returns the marker to write, or
-- nil. Checked here, after the decisions, so that a call which decides nothing (a
-- heartbeat) does not ask. One that raises stops the fold there, and it and those after
-- it are left to the worker (groups.lua meets the error and sets it aside).
local function fold_made(group_max)
  local caught_up, entries_read = caught_up_group(K_DEC, GROUPS_GROUP, #made)
  if not caught_up then return nil end
  GROUP_MAX = tonumber(group_max or default_group_max)
  local folded, count = nil, 0
  for _, decision in ipairs(made) do
    if not pcall(fold_decision, decision[2]) then break end
    folded, count = decision[1], count + 1
  end
  if folded then
    move_group(K_DEC, GROUPS_GROUP, folded, entries_read and entries_read + count,
      #made - count)
  end
  return folded
end

local function begin(keys, args)
  KEYS, ARGV = keys, args
  K_LOG, K_META, K_DEC, K_DLQ, K_POOLS, K_LIDX, K_NODES, K_DEADLINES, K_ALIVE, K_LEASE =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
  K_IDLE, K_ENDED, K_SETTINGS, K_QUEUED, K_WAITS, K_STATS = KEYS[11], KEYS[12], KEYS[13],
    KEYS[14], KEYS[15], KEYS[16]
  K_GROUPS_LEASE = KEYS[17]
  P, GROUP, HOLDER = ARGV[1], ARGV[2], ARGV[3]
  now_ms, now_seq, now_id, now_text = 0, 0, '', '0'
  decided, dead_lettered, made, delivered, nothing_queued = 0, 0, nil, {}, nil
  reset_pools()
end

local function apply(keys, args)
  begin(keys, args)
  -- A trusted producer's append holds no lease: it decides only what any holder would
  -- decide next, at the log's tip (run_ingress), and only while some worker holds it.
  local leases = redis.call('MGET', K_LEASE, K_GROUPS_LEASE)
  if ARGV[MODE] ~= 'append' and leases[1] ~= HOLDER then return {-1} end
  local meta = redis.call('HMGET', K_META, 'applied', 'group_max')
  load_settings()
  -- Decisions are folded here while some worker holds the group-state role and that
  -- projection has folded everything made before (fold_made).
  if leases[2] then made = {} end
  local done, skipped, failed_id, failure, waiting, applied, appended
  local marks = {} -- the markers to write, in one HSET
  if ARGV[MODE] == 'ingress' or ARGV[MODE] == 'append' then
    done, skipped, failed_id, failure, waiting, applied, appended =
      run_ingress(MODE + 2, meta[1] or '0-0', leases[1] ~= false)
    if done > 0 then marks = {'applied', applied} end
  else
    done, skipped, failed_id, failure =
      run_batch(K_META, 'applied', K_LOG, GROUP, MODE + 1, read_entry, apply_entry)
    if not done then return {-2} end
  end
  local folded = not failed_id and made and #made > 0 and fold_made(meta[2])
  if folded then
    marks[#marks + 1] = 'groups_applied'
    marks[#marks + 1] = folded
  end
  if #marks > 0 then redis.call('HSET', K_META, unpack(marks)) end
  if failed_id then return {-3, failed_id, failure} end
  return {done, skipped, dead_lettered, waiting or 0, appended or {}}
end

-- @register apply
