-- Everything serving reads of one resident, in one round trip.
-- KEYS: profile, holdings, dismissed, recent[, packed list]. ARGV: how many recent items
-- (0: none). Returns {profile fields and values, holdings, dismissed, recent items,
-- packed list or ""}.
local n = tonumber(ARGV[1])
local recent = {}
if n > 0 then recent = redis.call('LRANGE', KEYS[4], 0, n - 1) end
local packed = ''
if KEYS[5] then packed = redis.call('GET', KEYS[5]) or '' end
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2]),
        redis.call('SMEMBERS', KEYS[3]), recent, packed}
