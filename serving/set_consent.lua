-- Record a consent change; the later *receipt* wins (server time, never the time stamp a
-- client wrote), the consumer's rule for consent events (streaming/apply_batch.lua). The
-- API receives the decision at ARGV[2] and produces its event with that Kafka time stamp,
-- so when the consumer applies the event later it writes the same values, and an event
-- received earlier (in the backlog) cannot undo it.
-- KEYS: profile hash. ARGV: "0"/"1", receipt epoch seconds as text (ms). Returns 1 if written.
local cur = tonumber(redis.call('HGET', KEYS[1], 'consent_ts') or '-1e300')
if tonumber(ARGV[2]) >= cur then
  redis.call('HSET', KEYS[1], 'consent', ARGV[1], 'consent_ts', ARGV[2])
  return 1
end
return 0
