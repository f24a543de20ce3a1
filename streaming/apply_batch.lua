-- Apply a batch of events, exactly once each (loaded after ingest_header.lua and
-- erase_resident_fn.lua). ARGV after the header: one argument per event, its STRIDE fields
-- joined by \x1f: event_id, resident_id, type, ts (epoch s), combination
-- "day|week|channel|domain|factor", payload (recent item JSON | profile "k\tv\t..." |
-- consent "<0|1> <receipt epoch s>"), members (holdings "b:x s:y" | dismissed bundle id), funnel key,
-- funnel stage, funnel index member ("<model_version>:<variant>").
-- Returns {applied, duplicates, erased resident ids...}.
--
-- Each event first sets its de-duplication marker (SET NX EX) and its effects are applied
-- only when the marker was new; the script runs atomically, so marker and effects are
-- written together or not at all.
--
-- Effects that are set unions, sums or maxima (recent pushes, last contact, active sets,
-- counters) are gathered in Lua tables and written once per key at the end, so an event
-- costs about four Redis calls (marker, neighbourhood look-up, recent push and TTL); an
-- erasure in the middle of the batch drops what was gathered for that resident before it,
-- so order is kept. Per contact, the resident goes into the *day* sets of its dimensions
-- only: a week set is the union of its days', so each day set's members are written to
-- the week set as well.
local applied, dups = 0, 0
local erased = {}
local nb_cache = {}
local recent, recent_order = {}, {}  -- rid -> items oldest→newest (at most CAP)
local lastc, lastc_text = {}, {}       -- rid -> max contact ts (number, as given)
local day_sets = {}                    -- day active key -> {rid -> true}
local day_keys = {}                    -- day active keys, in creation order
local week_of = {}                     -- day active key -> the week key of the same dimension
local combos = {}                      -- "day|week|channel|domain|factor" -> names (below)
local counts = {}                      -- "day|week" -> {type -> n}
local count_keys = {}                  -- "day|week" -> {contacts day key, contacts week key}
local funnels = {}                     -- funnel key -> {stage -> n}
local funnel_members = {}

local PATTERN = '^' .. string.rep('([^\31]*)\31', 9) .. '([^\31]*)$'

-- the key names of one combination, built once per script call
local function names_of(combo0)
  local day, week, channel, domain, factor =
    string.match(combo0, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local dims = {'all=all', 'channel=' .. channel}
  if domain ~= '' then dims[#dims + 1] = 'domain=' .. domain end
  if factor ~= '' then dims[#dims + 1] = 'factor=' .. factor end
  local dayp, weekp = A_PRE .. 'day:' .. day .. ':', A_PRE .. 'week:' .. week .. ':'
  local sets = {}
  for _, d in ipairs(dims) do
    local k = dayp .. d
    local s = day_sets[k]
    if not s then
      s = {}; day_sets[k] = s; day_keys[#day_keys + 1] = k; week_of[k] = weekp .. d
    end
    sets[#sets + 1] = s
  end
  local dw = day .. '|' .. week
  if not counts[dw] then
    counts[dw] = {}; count_keys[dw] = {C_PRE .. 'day:' .. day, C_PRE .. 'week:' .. week}
  end
  local names = {sets = sets, dayp = dayp .. 'nb=', weekp = weekp .. 'nb=', nb = {},
                 counts = counts[dw]}
  combos[combo0] = names
  return names
end

-- the neighbourhood set of a combination (created on first use)
local function nb_set(names, nb)
  local s = names.nb[nb]
  if not s then
    local k = names.dayp .. nb
    s = day_sets[k]
    if not s then
      s = {}; day_sets[k] = s; day_keys[#day_keys + 1] = k; week_of[k] = names.weekp .. nb
    end
    names.nb[nb] = s
  end
  return s
end

for a = FIRST, #ARGV do
  local eid, rid, typ, tstext, combo0, payload, members, fkey, stage, fmember =
    string.match(ARGV[a], PATTERN)
  if redis.call('SET', SEEN_PRE .. eid, '1', 'NX', 'EX', SEEN_TTL) then
    applied = applied + 1
    if typ == 'erase' then
      erase(rid)
      nb_cache[rid] = nil
      if recent[rid] then recent[rid] = {} end  -- keeps its single place in recent_order
      lastc[rid] = nil
      lastc_text[rid] = nil
      for _, s in pairs(day_sets) do s[rid] = nil end
      erased[#erased + 1] = rid
    elseif typ == 'profile' then
      local pk = R_PRE .. rid .. R_SUF .. 'profile'
      local ts = tonumber(tstext)
      local cur = tonumber(redis.call('HGET', pk, 'profile_ts') or '-1e300')
      if ts >= cur then
        local args = {}
        for part in string.gmatch(payload, '[^\t]+') do args[#args + 1] = part end
        args[#args + 1] = 'profile_ts'; args[#args + 1] = tstext
        redis.call('HSET', pk, unpack(args))
        nb_cache[rid] = nil
      end
    elseif typ == 'consent' then
      -- payload "<1|0> <receipt epoch s>": the later receipt wins, whatever time stamp the
      -- client wrote (the consent API writes by the same rule: serving/set_consent.lua)
      local value, received = string.match(payload, '^([01]) (%S+)$')
      local pk = R_PRE .. rid .. R_SUF .. 'profile'
      local cur = tonumber(redis.call('HGET', pk, 'consent_ts') or '-1e300')
      if tonumber(received) >= cur then
        redis.call('HSET', pk, 'consent', value, 'consent_ts', received)
      end
    else
      -- a contact
      local ts = tonumber(tstext)
      local items = recent[rid]
      if not items then
        items = {}; recent[rid] = items; recent_order[#recent_order + 1] = rid
      end
      items[#items + 1] = payload
      if #items > CAP then table.remove(items, 1) end
      local lc = lastc[rid]
      if not lc or lc < ts then lastc[rid] = ts; lastc_text[rid] = tstext end
      local nb = nb_cache[rid]
      if not nb then
        nb = redis.call('HGET', R_PRE .. rid .. R_SUF .. 'profile', 'neighbourhood')
          or '_unknown'
        nb_cache[rid] = nb
      end
      local names = combos[combo0] or names_of(combo0)
      local sets = names.sets
      for j = 1, #sets do sets[j][rid] = true end
      nb_set(names, nb)[rid] = true
      local c = names.counts
      c[typ] = (c[typ] or 0) + 1
      if typ == 'subscribe' or typ == 'unsubscribe' then
        local base = R_PRE .. rid .. R_SUF
        local hk, htk = base .. 'holdings', base .. 'holdings_ts'
        for m in string.gmatch(members, '%S+') do
          local cur = tonumber(redis.call('HGET', htk, m) or '-1e300')
          if ts >= cur then
            redis.call('HSET', htk, m, tstext)
            if typ == 'subscribe' then redis.call('SADD', hk, m)
            else redis.call('SREM', hk, m) end
          end
        end
      elseif typ == 'dismiss' and members ~= '' then
        redis.call('SADD', R_PRE .. rid .. R_SUF .. 'dismissed', members)
      end
      if fkey ~= '' then
        local f = funnels[fkey]
        if not f then f = {}; funnels[fkey] = f end
        f[stage] = (f[stage] or 0) + 1
        funnel_members[fmember] = true
      end
    end
  else
    dups = dups + 1
  end
end

-- gathered writes, in chunks that stay far below Lua's unpack limit
local CHUNK = 1000
local function sadd_all(key, list)
  for i = 1, #list, CHUNK do
    redis.call('SADD', key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end
for _, rid in ipairs(recent_order) do
  local items = recent[rid]
  if #items > 0 then
    local rk = R_PRE .. rid .. R_SUF .. 'recent'
    if redis.call('LPUSH', rk, unpack(items)) > CAP then redis.call('LTRIM', rk, 0, CAP - 1) end
    redis.call('EXPIRE', rk, RECENT_TTL)
  end
end
local zargs = {}
for rid, text in pairs(lastc_text) do
  zargs[#zargs + 1] = text; zargs[#zargs + 1] = rid
  if #zargs >= 2 * CHUNK then redis.call('ZADD', LAST, 'GT', unpack(zargs)); zargs = {} end
end
if #zargs > 0 then redis.call('ZADD', LAST, 'GT', unpack(zargs)) end
-- each day set, then the same members into its week set (a week's set is the union of
-- its days'); every key written goes into the index once, and gets its TTL once
local written, seen_week = {}, {}
for _, key in ipairs(day_keys) do
  local m = {}
  for rid, _ in pairs(day_sets[key]) do m[#m + 1] = rid end
  local wk = week_of[key]
  if #m > 0 then sadd_all(key, m); sadd_all(wk, m) end
  written[#written + 1] = key
  if not seen_week[wk] then seen_week[wk] = true; written[#written + 1] = wk end
end
if #written > 0 then sadd_all(AIDX, written) end
for _, key in ipairs(written) do redis.call('EXPIRE', key, COUNTER_TTL) end
for dw, fields in pairs(counts) do
  local total = 0
  local cd, cw = count_keys[dw][1], count_keys[dw][2]
  for field, n in pairs(fields) do
    redis.call('HINCRBY', cd, field, n); redis.call('HINCRBY', cw, field, n)
    total = total + n
  end
  if total > 0 then
    redis.call('HINCRBY', cd, 'all', total); redis.call('HINCRBY', cw, 'all', total)
    redis.call('EXPIRE', cd, COUNTER_TTL); redis.call('EXPIRE', cw, COUNTER_TTL)
  end
end
for key, stages in pairs(funnels) do
  for field, n in pairs(stages) do redis.call('HINCRBY', key, field, n) end
end
local fm = {}
for member, _ in pairs(funnel_members) do fm[#fm + 1] = member end
if #fm > 0 then sadd_all(FIDX, fm) end
local out = {applied, dups}
for _, rid in ipairs(erased) do out[#out + 1] = rid end
return out
