-- Switch a keyspace pointer to a new version, only if it still points where the publish
-- started. KEYS: pointer, versions zset, new version's meta hash. ARGV: expected old
-- version ("" = none), new version, score (epoch s), published_at.
-- Returns {1, old} on success, {0, actual} if the pointer moved since the publish started.
local cur = redis.call('GET', KEYS[1])
local expected = ARGV[1]
if (cur or '') ~= expected then return {0, cur or ''} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'live', 'published_at', ARGV[4], 'previous', expected)
return {1, expected}
