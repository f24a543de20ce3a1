-- Apply one group of events, exactly once (loaded after ingest_header.lua and
-- aggregates_fn.lua). A group is some residents' events, in order, all in one hash slot on a
-- Redis Cluster (their keys share the slot; the markers and outbox carry its tag), or any
-- residents on a single Redis. KEYS[1]: the group's outbox key (routes the call).
--
-- ARGV[2], msgpack, one flat array:
--   mode ('direct' | 'outbox'), slot tag, entry id,
--   n, event id * n                                  the group's events (for markers)
--   n, 'day|week' * n                                day buckets of contacts (1-based)
--   n, resident block * n:
--     rid, nops, op *, last contact ts ('' if none), nitems, recent item * nitems
--     ops in order: 'E' (erase) | 'N', n, bucket index * n (contacts: the resident goes into
--     the neighbourhood sets of those days/weeks, its neighbourhood read now) | 'P', ts,
--     "k\tv\t..." (profile) | 'C', field, 0|1, receipt ts (consent of one purpose: field
--     'consent' personalisation, 'contact' outreach) | 'S'|'U', ts, "b:x s:y"
--     (subscribe, unsubscribe) | 'D', bundle id (dismiss)
-- ARGV[3], msgpack: the consumer's aggregate records (aggregates_fn.lua), one flat array.
--
-- Either none of the events was applied before, and every effect is written with their
-- markers; or some were, and nothing is written: returns {'dup', ids, pending}, and the
-- consumer sends the group again without them. The script runs atomically, so markers and
-- effects are written together or not at all.
-- 'direct' applies the aggregates here (a single Redis: every key is local). 'outbox' (a
-- cluster: the aggregates live in the {eng} slot) stores them in the slot's outbox under
-- the entry id and returns them; apply_global.lua applies them once. Returns
-- {'ok', applied, erased rids, payload ('' when direct), pending}; payload: msgpack
-- {records *} (records: msgpack arrays); pending: the outbox's entries before this one,
-- {id, payload, ...}, for the consumer to apply (recovery after a crash between the two
-- scripts).
local B = cmsgpack.unpack(ARGV[2])
local mode, tag, entry = B[1], B[2], B[3]
local outbox = KEYS[1]
local a = 4
local n_events = B[a]
local e0, e1 = a + 1, a + n_events
local pending = {}
if mode == 'outbox' then pending = redis.call('HGETALL', outbox) end
local seen_prefix = SEEN_PRE .. tag .. '}:'
local dups = marked(seen_prefix, B, e0, e1)
if #dups > 0 then return {'dup', dups, pending} end
mark(seen_prefix, B, e0, e1)

a = e1 + 1
local n_buckets = B[a]
local days, weeks = {}, {}
for b = 1, n_buckets do
  days[b], weeks[b] = string.match(B[a + b], '^([^|]*)|(.*)$')
end
a = a + n_buckets + 1

local erased = {}
local nb_members = {}  -- nb -> bucket -> rids (no key strings built per resident)
local nb_order = {}
local zargs = {}
local contact, contact_order = {}, {}  -- rid -> last contact decision written ('0'|'1')
local TRIM_TO, RECENT_TTL_TEXT = tostring(CAP - 1), tostring(RECENT_TTL)

local n_res = B[a]
a = a + 1
for _ = 1, n_res do
  local rid, nops = B[a], B[a + 1]
  a = a + 2
  local base = R_PRE .. rid .. R_SUF
  local nb = nil
  for _ = 1, nops do
    local op = B[a]
    if op == 'N' then
      if not nb then
        nb = redis.call('HGET', base .. 'profile', 'neighbourhood') or '_unknown'
      end
      local by_bucket = nb_members[nb]
      if not by_bucket then by_bucket = {}; nb_members[nb] = by_bucket end
      for r = a + 2, a + 1 + B[a + 1] do
        local b = B[r]
        local m = by_bucket[b]
        if not m then m = {}; by_bucket[b] = m; nb_order[#nb_order + 1] = {b, nb} end
        m[#m + 1] = rid
      end
      a = a + 2 + B[a + 1]
    elseif op == 'E' then
      for _, kind in ipairs(KINDS) do redis.call('DEL', base .. kind) end
      erased[#erased + 1] = rid
      -- its 'X' record takes it out of the contactable set
      if contact[rid] ~= nil then contact[rid] = false end
      nb = nil
      a = a + 1
    elseif op == 'P' then
      local pk = base .. 'profile'
      local cur = tonumber(redis.call('HGET', pk, 'profile_ts') or '-1e300')
      if tonumber(B[a + 1]) >= cur then
        local args = {}
        for part in string.gmatch(B[a + 2], '[^\t]+') do args[#args + 1] = part end
        args[#args + 1] = 'profile_ts'; args[#args + 1] = B[a + 1]
        redis.call('HSET', pk, unpack(args))
        nb = nil
      end
      a = a + 3
    elseif op == 'C' then
      -- per purpose, the later receipt wins, whatever time stamp the client wrote (the
      -- consent API writes by the same rule: serving/set_consent.lua); a contact decision
      -- written also updates the contactable set, through an aggregate record ('K')
      local field, given, received = B[a + 1], B[a + 2], B[a + 3]
      local pk = base .. 'profile'
      local cur = tonumber(redis.call('HGET', pk, field .. '_ts') or '-1e300')
      if tonumber(received) >= cur then
        redis.call('HSET', pk, field, given, field .. '_ts', received)
        if field == 'contact' then
          if contact[rid] == nil then contact_order[#contact_order + 1] = rid end
          contact[rid] = given
        end
      end
      a = a + 4
    elseif op == 'S' or op == 'U' then
      -- last writer wins by event time, per holdings member; ties to the later-ingested
      local ts = tonumber(B[a + 1])
      local hk, htk = base .. 'holdings', base .. 'holdings_ts'
      for m in string.gmatch(B[a + 2], '%S+') do
        local cur = tonumber(redis.call('HGET', htk, m) or '-1e300')
        if ts >= cur then
          redis.call('HSET', htk, m, B[a + 1])
          if op == 'S' then redis.call('SADD', hk, m) else redis.call('SREM', hk, m) end
        end
      end
      a = a + 3
    elseif op == 'D' then
      redis.call('SADD', base .. 'dismissed', B[a + 1])
      a = a + 2
    else
      return redis.error_reply('unknown resident op ' .. tostring(op))
    end
  end
  local lastc, n_items = B[a], B[a + 1]
  if lastc ~= '' then zargs[#zargs + 1] = lastc; zargs[#zargs + 1] = rid end
  if n_items > 0 then
    local rk = base .. 'recent'
    local len = redis.call('LPUSH', rk, unpack(B, a + 2, a + 1 + n_items))
    if len > CAP then redis.call('LTRIM', rk, '0', TRIM_TO) end
    redis.call('EXPIRE', rk, RECENT_TTL_TEXT)
  end
  a = a + 2 + n_items
end

-- what only this slot knew, as aggregate records: erasures first (the consumer's records
-- hold only what came after them), then neighbourhood sets, last-contact times and contact
-- decisions (each resident's last one written, after any erasure of it)
local own = {}
for _, rid in ipairs(erased) do own[#own + 1] = 'X'; own[#own + 1] = rid end
local tail = {}
for _, bn in ipairs(nb_order) do
  local b, nb = bn[1], bn[2]
  local m = nb_members[nb][b]
  tail[#tail + 1] = 'M'; tail[#tail + 1] = 2
  tail[#tail + 1] = A_PRE .. 'day:' .. days[b] .. ':nb=' .. nb
  tail[#tail + 1] = A_PRE .. 'week:' .. weeks[b] .. ':nb=' .. nb
  tail[#tail + 1] = #m
  for _, rid in ipairs(m) do tail[#tail + 1] = rid end
end
if #zargs > 0 then
  tail[#tail + 1] = 'Z'; tail[#tail + 1] = #zargs / 2
  for _, v in ipairs(zargs) do tail[#tail + 1] = v end
end
for _, rid in ipairs(contact_order) do
  if contact[rid] then
    tail[#tail + 1] = 'K'; tail[#tail + 1] = rid; tail[#tail + 1] = tonumber(contact[rid])
  end
end

local records = cmsgpack.unpack(ARGV[3])
if mode == 'direct' then
  apply_records(own, 1, #own)
  apply_records(records, 1, #records)
  apply_records(tail, 1, #tail)
  finish_aggregates()
  return {'ok', n_events, erased, '', pending}
end
local payload = cmsgpack.pack({own, records, tail})
if #own + #records + #tail > 0 then redis.call('HSET', outbox, entry, payload) end
return {'ok', n_events, erased, payload, pending}
