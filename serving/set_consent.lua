-- Record a consent change for one purpose; the newer time stamp wins, the consumer's rule
-- for consent events (streaming/apply_batch.lua), so the API write and the event it
-- produced, applied later by the consumer, agree, and an older event arriving late cannot
-- undo it. KEYS: profile hash. ARGV: field ("consent" or "contact"), "0"/"1", epoch
-- seconds as text. Returns 1 if written.
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '_ts') or '-1e300')
if tonumber(ARGV[3]) >= cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. '_ts', ARGV[3])
  return 1
end
return 0
