-- Shared start of the ingestion scripts. ARGV[1]: the header, a msgpack array of the
-- fixed parts of the key names (checked against bouquet.core.keys.Keys at start-up by
-- bouquet.streaming.state), the marker bucket width, TTLs and caps, the per-resident key
-- kinds to erase and the contactable set; ARGV[2] (and ARGV[3]): the call's own arguments, msgpack too — one
-- argument instead of thousands keeps the client's cost per event low (docs/ingestion.md).
local H = cmsgpack.unpack(ARGV[1])
local R_PRE, R_SUF, A_PRE = H[1], H[2], H[3]
local LAST, AIDX, FIDX = H[4], H[5], H[6]
local SEEN_PRE, APPLIED_PRE = H[7], H[8]
local WIDTH, CAP, COUNTER_TTL = tonumber(H[9]), tonumber(H[10]), tonumber(H[11])
local RECENT_TTL = tonumber(H[12])
local KINDS = H[13]
local CONTACTABLE = H[14]  -- the outreach planner's contactable set (under {eng})
-- Markers (event ids, outbox entry ids) go into a SET per time bucket of WIDTH seconds (a
-- third of the de-duplication window); a lookup checks the current bucket and the three
-- before it, so a marker is kept at least the window and at most a third longer.
local BUCKETS = 4
local NOW_BUCKET = math.floor(tonumber(redis.call('TIME')[1]) / WIDTH)

-- the ids t[a..z] found in the bucket SETs named prefix .. bucket
local function marked(prefix, t, a, z)
  local found = {}
  if z < a then return found end
  for i = 0, BUCKETS - 1 do
    local key = prefix .. (NOW_BUCKET - i)
    if redis.call('EXISTS', key) == 1 then
      local s = a
      while s <= z do
        local e = math.min(z, s + 999)
        local hits = redis.call('SMISMEMBER', key, unpack(t, s, e))
        for j = 1, #hits do
          if hits[j] == 1 then found[#found + 1] = t[s + j - 1] end
        end
        s = e + 1
      end
    end
  end
  return found
end

-- add the ids t[a..z] to the current bucket, which expires once no lookup reads it
local function mark(prefix, t, a, z)
  if z < a then return end
  local key = prefix .. NOW_BUCKET
  local s = a
  while s <= z do
    local e = math.min(z, s + 999)
    redis.call('SADD', key, unpack(t, s, e))
    s = e + 1
  end
  redis.call('EXPIREAT', key, (NOW_BUCKET + BUCKETS) * WIDTH)
end
