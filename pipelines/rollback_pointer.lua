-- Point a pointer back at the version before the current one, only if it still names the
-- current one. The restored version keeps its own "previous", so a second rollback steps
-- further back (never forward again); the version rolled back from is marked so.
-- KEYS: pointer, restored version's meta, current version's meta.
-- ARGV: current version, restored version.
-- Returns {1, current} on success, {0, actual} if the pointer moved meanwhile.
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return {0, cur or ''} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'live')
redis.call('HSET', KEYS[3], 'state', 'rolled-back')
return {1, ARGV[1]}
