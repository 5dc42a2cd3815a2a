-- pools.lua: pools, node membership and node selection, included by apply.lua after
-- its locals (P, K_POOLS, K_LIDX, K_META, the settings and suffixes); no KEYS or ARGV of
-- its own, never run alone.

-- Nodes whose capacity may have become usable during the entry being applied (a slot
-- released, the node joined its pools): queue.lua serves their pairs afterwards.
local changed_nodes = {}
local function capacity_changed(node_id)
  changed_nodes[#changed_nodes + 1] = node_id
end

local function load_score(running, max_concurrency)
  return math.floor(running * FULL / max_concurrency)
end

-- The language index as this call has read it (pair -> its listing, or false); every
-- change to the index clears it. A listing holds the pair's pools in order and the
-- needles pick_in_pool looks for in a node's pairs field (serves).
local listed_pools = {}

local function listing(pair)
  local listed = listed_pools[pair]
  if listed == nil then
    local pools = redis.call('HGET', K_LIDX, pair)
    listed = false
    if pools then
      local src, tgt = string.match(pair, '^(.-)>(.*)$')
      listed = {pools = split(pools, ','), needle = ',' .. pair .. ',',
                src = ',' .. src .. ',', tgt = ',' .. tgt .. ',', na = 'na:' .. pair}
    end
    listed_pools[pair] = listed
  end
  return listed
end

local function reset_pools() -- at the start of every call
  changed_nodes, listed_pools = {}, {}
end

local function index_pool(name, langs, keep_sorted)
  listed_pools = {}
  local list = split(langs, ',')
  for _, src in ipairs(list) do
    for _, tgt in ipairs(list) do
      if src ~= tgt then
        local pair = src .. '>' .. tgt
        local pools = split(redis.call('HGET', K_LIDX, pair) or '', ',')
        pools[#pools + 1] = name
        if keep_sorted then table.sort(pools) end
        redis.call('HSET', K_LIDX, pair, table.concat(pools, ','))
      end
    end
  end
end

-- The pools a node with these pool languages belongs to, sorted by name.
local function pools_for(langs)
  if redis.call('HGET', K_META, 'mode') ~= 'configured' then
    local name = 'auto+' .. string.gsub(langs, ',', '+')
    if redis.call('HSETNX', K_POOLS, name, '0|' .. langs) == 1 then
      index_pool(name, langs, true)
    end
    return {name}
  end
  local have = ',' .. langs .. ','
  local flat = redis.call('HGETALL', K_POOLS)
  local names, defs = {}, {}
  for i = 1, #flat, 2 do
    names[#names + 1] = flat[i]
    defs[flat[i]] = flat[i + 1]
  end
  table.sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local covered = true
    for _, lang in ipairs(split(string.match(defs[name], '|(.*)$'), ',')) do
      if not string.find(have, ',' .. lang .. ',', 1, true) then
        covered = false
        break
      end
    end
    if covered then out[#out + 1] = name end
  end
  return out
end

local function drop_memberships(node_id, pools)
  for _, pool in ipairs(split(pools, ',')) do
    redis.call('ZREM', P .. S_POOL .. pool, node_id)
  end
  redis.call('HSET', P .. S_NODE .. node_id, 'inpool', '0')
end

-- Whether a node in state `state` with these loads (as text) may be offered work: up
-- and not overloaded. Freshness is checked when it is picked, since it changes with
-- time alone. gpu '' is a node without a GPU: the GPU threshold does not apply to it.
local function wanted_in_pools(state, cpu, gpu, mem)
  return state == 'up' and num(cpu) <= CPU_MAX and (gpu == '' or num(gpu) <= GPU_MAX)
    and num(mem) <= MEM_MAX
end

-- Keep a node in its pools' sorted sets exactly while wanted_in_pools says so.
local SYNC_FIELDS = {'st', 'cpu', 'gpu', 'mem', 'run', 'mc', 'pools', 'inpool'}
local function sync_membership(node_id)
  local nk = P .. S_NODE .. node_id
  local f = redis.call('HMGET', nk, unpack(SYNC_FIELDS))
  local wanted = wanted_in_pools(f[1], f[2], f[3], f[4])
  if wanted and f[8] ~= '1' then
    local score = load_score(tonumber(f[5]), tonumber(f[6]))
    for _, pool in ipairs(split(f[7], ',')) do
      redis.call('ZADD', P .. S_POOL .. pool, score, node_id)
    end
    redis.call('HSET', nk, 'inpool', '1')
    capacity_changed(node_id)
  elseif not wanted and f[8] == '1' then
    drop_memberships(node_id, f[7])
  end
end

local function leave_pools(node_id)
  local f = redis.call('HMGET', P .. S_NODE .. node_id, 'pools', 'inpool')
  if f[2] == '1' then drop_memberships(node_id, f[1]) end
end

local function join_pools(node_id, langs)
  redis.call('HSET', P .. S_NODE .. node_id, 'pools', table.concat(pools_for(langs), ','))
  sync_membership(node_id)
end

-- `f`: the node's mc pools inpool, when the caller has them (a result), else read here.
local function rescore(node_id, running, f)
  local nk = P .. S_NODE .. node_id
  f = f or redis.call('HMGET', nk, 'mc', 'pools', 'inpool')
  if f[3] == '1' then
    local score = int_text(load_score(running, tonumber(f[1])))
    for _, pool in ipairs(split(f[2], ',')) do
      redis.call('ZADD', P .. S_POOL .. pool, 'XX', score, node_id)
    end
  end
end

local function release(node_id, job_id, node_fields)
  local nk = P .. S_NODE .. node_id
  local running = redis.call('HINCRBY', nk, 'run', '-1')
  if running < 0 then
    running = 0
    redis.call('HSET', nk, 'run', '0')
  end
  redis.call('SREM', P .. S_NJOBS .. node_id, job_id)
  redis.call('ZREM', K_DEADLINES, job_id)
  rescore(node_id, running, node_fields)
  capacity_changed(node_id)
end

-- A node record's pairs field ('*,de,en,': every ordered pair of those languages; or
-- ',de>en,en>de,', model.entries.stored_pairs) as a list of pairs, and whether it holds
-- one pair (its needles ',de>en,', ',de,' and ',en,'); byte 42 is '*'.
local function node_pairs(stored)
  if not stored or string.byte(stored, 1) ~= 42 then return split(stored, ',') end
  local langs, listed = split(string.sub(stored, 2), ','), {}
  for _, src in ipairs(langs) do
    for _, tgt in ipairs(langs) do
      if src ~= tgt then listed[#listed + 1] = src .. '>' .. tgt end
    end
  end
  return listed
end

local function serves(stored, needle, src_needle, tgt_needle)
  if string.byte(stored, 1) ~= 42 then return string.find(stored, needle, 1, true) end
  return string.find(stored, src_needle, 2, true) and string.find(stored, tgt_needle, 2, true)
end

-- The least-loaded node of a pool that has a fresh heartbeat, serves the pair, is not
-- inside a MODEL_NOT_AVAILABLE window for it and is not quarantined, with its fields
-- (hb, pairs, mc, pools), or
-- nil. Members are read in load order (ties by node id, the sorted set's own order), a
-- page at a time, and at most SCAN_LIMIT are examined: the cost does not grow with the
-- pool.
local function pick_in_pool(pool, listed, exclude)
  local key = P .. S_POOL .. pool
  local seen, page = 0, math.min(4, SCAN_LIMIT) -- the first few usually serve: more only then
  while seen < SCAN_LIMIT do
    local ids = redis.call('ZRANGEBYSCORE', key, '-inf', BELOW_FULL, 'LIMIT',
      seen == 0 and '0' or int_text(seen), page == 4 and '4' or int_text(page))
    for _, node_id in ipairs(ids) do
      if node_id ~= exclude then
        local f = redis.call('HMGET', P .. S_NODE .. node_id, 'hb', 'pairs', 'mc', 'pools',
          listed.na, 'quar')
        if now_ms - num(f[1]) <= FRESH_MS
          and serves(f[2], listed.needle, listed.src, listed.tgt)
          and now_ms >= num(f[5] or 0) and now_ms >= num(f[6] or 0) then
          return node_id, f
        end
      end
    end
    if #ids < page then return nil end
    seen = seen + #ids
    page = math.min(16, SCAN_LIMIT - seen)
  end
  return nil
end

-- Candidate pools for the pair: the session's preferred pool first, then the language
-- index's order. Returns node, pool, node fields, or nil, nil, nil and the reason.
local function place(pair, preferred, exclude)
  local listed = listing(pair)
  if not listed then return nil, nil, nil, 'no_pool' end
  local pools = listed.pools
  if preferred ~= '' and pools[1] ~= preferred then
    for i, pool in ipairs(pools) do
      if pool == preferred then -- a copy with it first: the listing is kept for the call
        pools = {pool, unpack(pools, 1, i - 1)}
        for j = i + 1, #listed.pools do pools[#pools + 1] = listed.pools[j] end
        break
      end
    end
  end
  for _, pool in ipairs(pools) do
    local node_id, fields = pick_in_pool(pool, listed, exclude)
    if node_id then return node_id, pool, fields end
  end
  return nil, nil, nil, 'no_capacity'
end

