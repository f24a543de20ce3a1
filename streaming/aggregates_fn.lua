-- The engagement aggregates (all under the {eng} hash tag: one cluster slot), applied from
-- records t[i..j] (flat arrays) built by bouquet.streaming.state (and, for what only the
-- resident's own slot knows, by apply_group.lua); counts are numbers:
--   'X', rid                        erase rid from every active set, from last contact and
--                                   from the contactable set
--   'M', nk, key * nk, nm, rid * nm add the residents to each of the nk active sets
--   'Z', n, (score, rid) * n        raise last-contact times (ZADD GT)
--   'I', key, field, n, ttl         HINCRBY; ttl 1: the key gets the counter TTL
--   'F', member                     a funnel arm into the funnel index
--   'K', rid, 1|0                   contact consent granted | withdrawn: rid into | out of
--                                   the contactable set (an index; the profile is the truth)
-- Every active set written goes into the index once and gets the counter TTL once.
local written, noted = {}, {}
local ttl_keys, ttl_noted = {}, {}

local function sadd_range(key, t, a, z)
  while a <= z do
    local e = math.min(z, a + 999)
    redis.call('SADD', key, unpack(t, a, e))
    a = e + 1
  end
end

local function erase_aggregates(rid)
  redis.call('ZREM', LAST, rid)
  redis.call('SREM', CONTACTABLE, rid)
  for _, k in ipairs(redis.call('SMEMBERS', AIDX)) do
    if redis.call('SREM', k, rid) == 0 and redis.call('EXISTS', k) == 0 then
      redis.call('SREM', AIDX, k)  -- the set expired: prune the index on the way
    end
  end
  -- sets written earlier in this call go into the index only at its end
  -- (finish_aggregates): an outbox entry applied before this erasure may have written them
  for _, k in ipairs(written) do redis.call('SREM', k, rid) end
end

local function apply_records(t, i, j)
  while i <= j do
    local op = t[i]
    if op == 'M' then
      local nk = tonumber(t[i + 1])
      local nm = tonumber(t[i + 2 + nk])
      local m0 = i + 3 + nk
      for k = i + 2, i + 1 + nk do
        local key = t[k]
        sadd_range(key, t, m0, m0 + nm - 1)
        if not noted[key] then noted[key] = true; written[#written + 1] = key end
      end
      i = m0 + nm
    elseif op == 'X' then
      erase_aggregates(t[i + 1])
      i = i + 2
    elseif op == 'Z' then
      local n = tonumber(t[i + 1])
      local s, z = i + 2, i + 1 + 2 * n
      while s <= z do
        local e = math.min(z, s + 1999)
        redis.call('ZADD', LAST, 'GT', unpack(t, s, e))
        s = e + 1
      end
      i = z + 1
    elseif op == 'I' then
      local key = t[i + 1]
      redis.call('HINCRBY', key, t[i + 2], t[i + 3])
      if t[i + 4] == 1 and not ttl_noted[key] then
        ttl_noted[key] = true; ttl_keys[#ttl_keys + 1] = key
      end
      i = i + 5
    elseif op == 'F' then
      redis.call('SADD', FIDX, t[i + 1])
      i = i + 2
    elseif op == 'K' then
      if tonumber(t[i + 2]) == 1 then redis.call('SADD', CONTACTABLE, t[i + 1])
      else redis.call('SREM', CONTACTABLE, t[i + 1]) end
      i = i + 3
    else
      return redis.error_reply('unknown aggregate record ' .. tostring(op))
    end
  end
end

local function finish_aggregates()
  local ttl = tostring(COUNTER_TTL)
  if #written > 0 then sadd_range(AIDX, written, 1, #written) end
  for _, k in ipairs(written) do redis.call('EXPIRE', k, ttl) end
  for _, k in ipairs(ttl_keys) do redis.call('EXPIRE', k, ttl) end
end
