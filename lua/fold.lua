-- fold.lua: folding one decision into its session's group state and ordered output
-- (the group-state projection's step); groups.lua folds batches of the decisions stream
-- with it, and apply.lua the decisions it has just made, when that projection is caught
-- up (see its fold_made). Included after common; the includer declares P, K_META and
-- GROUP_MAX (group_max_utterances in force). No KEYS or ARGV of its own.

-- Key suffixes; keys.py SUFFIXES holds the same strings (tested).
local S_INFL, S_HELD, S_OUT, S_GRP = 'infl:', 'held:', 'out:', 'grp:'

-- model/limits.py holds the same number (tested); text, as every integer sent to Redis
local OUTPUT_MAX_LEN = '1000'

local OUT_FIELDS = {'st', 'reason', 'err', 'cut', 'job', 'att', 'node', 'asr', 'nmt',
                    'tts', 'tts_ms', 'timings'}

local fold_ms, fold_at = 0, ''
local delivered = {} -- session, index pairs, for the worker's boundary logs

-- Integers go to Redis as text (common.lua int_text).
local function update_group(session_id, values)
  local st, cut, asr, nmt, tts_ms = values[1], values[4], values[8], values[9], values[11]
  local gk = P .. S_GRP .. session_id
  local g = redis.call('HMGET', gk, 'gid', 'n', 'asr', 'nmt', 'ended', 'tts_until')
  local gid, count, asr_all, nmt_all = g[1] or '0', tonumber(g[2] or 0), g[3], g[4]
  if not g[1] or g[5] == '1' or count >= GROUP_MAX then
    gid, count, asr_all, nmt_all = int_text(tonumber(gid) + 1), 0, '', ''
  end
  if st == 'ok' then
    if asr ~= '' then asr_all = (asr_all == '' and asr) or (asr_all .. ' ' .. asr) end
    if nmt ~= '' then nmt_all = (nmt_all == '' and nmt) or (nmt_all .. ' ' .. nmt) end
  end
  local tts_until = g[6] or '0'
  if st == 'ok' and tonumber(tts_ms) > 0 then
    tts_until = int_text(math.max(fold_ms, tonumber(tts_until)) + tonumber(tts_ms))
  end
  return gid, {gk, 'gid', gid, 'n', int_text(count + 1), 'asr', asr_all, 'nmt', nmt_all,
    'ended', (cut == 'max_length') and '0' or '1', 'tts_until', tts_until}
end

-- Append utterance `index`'s output entry (`fields`: name/value pairs after idx) at its
-- own place (index+1)-0, or right after the last entry when that place is taken or
-- passed; the stream keeps its newest OUTPUT_MAX_LEN entries (exact trimming: the same
-- on every backend). Indexes are text here, as the decisions and the in-flight sets
-- hold them. Its own place is tried first: Redis refuses an ID at or below the
-- stream's last, and only then is the last entry read (reading it every time, texts and
-- all, cost a result's call a twentieth of its instructions).
local function add_output(session_id, index, fields)
  local stream = P .. S_OUT .. session_id
  local placed = redis.pcall('XADD', stream, 'MAXLEN', OUTPUT_MAX_LEN,
    string.format('%d-0', tonumber(index) + 1), 'idx', index, unpack(fields))
  if type(placed) ~= 'table' or not placed.err then return end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', '1')[1]
  if not last then error(placed) end -- refused for another reason
  local ms, seq = id_parts(last[1])
  redis.call('XADD', stream, 'MAXLEN', OUTPUT_MAX_LEN, string.format('%d-%d', ms, seq + 1),
    'idx', index, unpack(fields))
end

local function deliver(session_id, index, values)
  local gid, group_write = update_group(session_id, values)
  group_write[#group_write + 1] = 'last'
  group_write[#group_write + 1] = index
  -- ASR_FINAL and NMT_DONE land in one write (the seeds' merged group lock).
  redis.call('HSET', unpack(group_write))
  local fields = {}
  for i, name in ipairs(OUT_FIELDS) do
    fields[#fields + 1] = name
    fields[#fields + 1] = values[i]
  end
  fields[#fields + 1] = 'grp'
  fields[#fields + 1] = gid
  fields[#fields + 1] = 'at'
  fields[#fields + 1] = fold_at
  add_output(session_id, index, fields)
  delivered[#delivered + 1] = session_id
  delivered[#delivered + 1] = index
end

-- An utterance has ended. Deliver it if every earlier finalized utterance of the
-- session is delivered, else hold it; then deliver whatever it was holding up.
local function settle(session_id, index, outcome)
  local values = {}
  for i, name in ipairs(OUT_FIELDS) do values[i] = outcome[name] or '' end
  local infl = P .. S_INFL .. session_id
  local first = redis.call('ZRANGE', infl, '0', '0')[1]
  if first ~= index then
    local held = {P .. S_HELD .. session_id .. ':' .. index}
    for i, name in ipairs(OUT_FIELDS) do
      held[#held + 1] = name
      held[#held + 1] = values[i]
    end
    redis.call('HSET', unpack(held))
    return
  end
  deliver(session_id, index, values)
  redis.call('ZREM', infl, index)
  while true do
    local next_index = redis.call('ZRANGE', infl, '0', '0')[1]
    if not next_index then return end
    local hk = P .. S_HELD .. session_id .. ':' .. next_index
    local waiting = redis.call('HMGET', hk, unpack(OUT_FIELDS))
    if not waiting[1] then return end
    deliver(session_id, next_index, waiting)
    redis.call('DEL', hk)
    redis.call('ZREM', infl, next_index)
  end
end

local folds = {}

function folds.d(e)
  if e.att == '1' then redis.call('ZADD', P .. S_INFL .. e.sid, e.idx, e.idx) end
end

-- A finalize waiting for a slot is in flight as a running job is: it holds later ones.
folds.w = folds.d

function folds.x(e)
  redis.call('ZADD', P .. S_INFL .. e.sid, e.idx, e.idx)
  settle(e.sid, e.idx, {st = 'rejected', reason = e.reason, cut = e.cut})
end

function folds.f(e)
  settle(e.sid, e.idx, {st = 'failed', reason = e.reason, err = e.err,
    cut = e.cut, job = e.job, att = e.att, node = e.node})
end

function folds.o(e)
  settle(e.sid, e.idx, {st = 'ok', cut = e.cut, job = e.job, att = e.att,
    node = e.node, asr = e.asr, nmt = e.nmt, tts = e.tts, tts_ms = e.tts_ms,
    timings = e.timings})
end

-- A notice: no utterance of the session's order (the session is unknown or closed),
-- so no group, no in-flight entry, nothing held.
function folds.n(e)
  add_output(e.sid, e.idx, {'st', 'notice', 'reason', e.reason, 'cut', e.cut, 'grp', '0',
    'at', fold_at})
end

function folds.e(e)
  local infl = P .. S_INFL .. e.sid
  for _, index in ipairs(redis.call('ZRANGE', infl, 0, -1)) do
    redis.call('DEL', P .. S_HELD .. e.sid .. ':' .. index)
  end
  redis.call('DEL', infl, P .. S_OUT .. e.sid, P .. S_GRP .. e.sid)
end

function folds.c(e)
  GROUP_MAX = tonumber(e.gmax)
  redis.call('HSET', K_META, 'group_max', e.gmax)
end

-- Fold one decision (its fields by name); kinds with nothing to fold are passed over.
local function fold_decision(entry)
  local fold = entry.k and folds[entry.k]
  if fold then
    fold_at = entry.at
    fold_ms = id_parts(entry.at)
    fold(entry)
  end
end
