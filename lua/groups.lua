-- groups.lua: fold a batch of the decisions stream into per-session group state, in
-- stream order, all or nothing: the group-state projection.
--
-- Every finalized utterance ends in exactly one outcome (ok, rejected, failed). Here
-- outcomes reach the session's output stream strictly in utterance order: an outcome
-- that ends early is held until every earlier finalized utterance has ended; a
-- rejection or failure takes its place in the order, so a session never stalls and
-- never skips. The outcome of utterance i has entry ID (i+1)-0; an entry that cannot
-- have its own place, because a later one is already out (a late utterance, whose first
-- finalize Redis lost, or a notice), goes right after the last entry instead. Each
-- delivery updates the session's conversation group in one write
-- (ASR and NMT text together) and its TTS playback window. Event time is the `at` field
-- of the decision (the log ID that caused it), never a clock.
--
-- KEYS[1] decisions     the stream folded here (XACK target)
-- KEYS[2] meta          hash: groups_applied (this projection's tracking marker) and
--                       group_max (group_max_utterances, once a c decision changed it)
-- KEYS[3] groups_lease  the role's lease; the batch is refused unless ARGV[3] holds it
--
-- ARGV[1] cell prefix ("es:{c0}:"); per-session keys are built from it
-- ARGV[2] consumer group to XACK
-- ARGV[3] holder (worker name)
-- ARGV[4] group_max_utterances by default (until a c decision changes it)
-- ARGV[5] the ID the tracking marker must have reached ('' for none; see run_batch)
-- ARGV[6] entry count, then per entry: id, field count n, then n name/value strings
--   decision kinds used: d (att 1 = finalized), w (att 1: finalized, waiting for a
--   slot), x (rejected), f (failed), o (ok),
--   n (notice: a finalize the cell could not take, written as st=notice),
--   e (the session expired: its outputs and group state go),
--   c (settings changed: gmax is group_max_utterances from then on)
-- Returns {applied, skipped_as_already_applied, {session, index, ...} delivered}, {-1}
-- when the lease is not held, {-2} when the marker falls short of ARGV[5], or
-- {-3, id, error} when the decision `id` raised (see run_batch).

-- @include common

local K_DEC, K_META, K_LEASE = KEYS[1], KEYS[2], KEYS[3]
local P, GROUP, HOLDER = ARGV[1], ARGV[2], ARGV[3]
if not holds_lease(K_LEASE, HOLDER) then return {-1} end
local GROUP_MAX = tonumber(redis.call('HGET', K_META, 'group_max') or ARGV[4])

-- @include fold

local function read_entry(pos)
  local id, nfields = ARGV[pos], tonumber(ARGV[pos + 1])
  local entry = {}
  for i = 1, nfields, 2 do entry[ARGV[pos + 1 + i]] = ARGV[pos + 2 + i] end
  return id, entry, pos + 2 + nfields
end

local function apply_entry(_, entry)
  fold_decision(entry)
end

local done, skipped, failed_id, failure = run_batch(K_META, 'groups_applied', K_DEC, GROUP,
  5, read_entry, apply_entry)
if not done then return {-2} end
if failed_id then return {-3, failed_id, failure} end
return {done, skipped, delivered}
