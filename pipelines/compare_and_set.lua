-- Point a keyspace pointer at another version, only if it still names the version the
-- caller read: the one write readers follow, on one key, so it is atomic on a single Redis
-- and on a Redis Cluster alike. KEYS: pointer. ARGV: expected version ("" = none), new
-- version. Returns {1, expected} on success, {0, actual} if the pointer moved meanwhile.
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return {0, cur or ''} end
redis.call('SET', KEYS[1], ARGV[2])
return {1, ARGV[1]}
