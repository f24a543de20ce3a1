-- Record a consent change for one purpose; the later *receipt* wins (server time, never the
-- time stamp a client wrote), the consumer's rule for consent events
-- (streaming/apply_group.lua). The API receives the decision at ARGV[3] and produces its
-- event with that Kafka time stamp, so when the consumer applies the event later it writes
-- the same values, and an event received earlier (in the backlog) cannot undo it.
-- KEYS: profile hash (one key: the script stays in the resident's hash slot). ARGV: field
-- ("consent" or "contact"), "0"/"1", receipt epoch seconds as text (ms). Returns 1 if
-- written.
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '_ts') or '-1e300')
if tonumber(ARGV[3]) >= cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. '_ts', ARGV[3])
  return 1
end
return 0
