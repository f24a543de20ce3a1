-- Count each dead letter once per source position.
-- KEYS[1]: the dead-letter counts hash (its {dlq} hash tag is the markers': one slot).
-- ARGV: marker TTL (s), then pairs of (marker key, reason).
-- Returns how many were counted (a redelivered bad message is not counted twice).
local ttl, hk = tonumber(ARGV[1]), KEYS[1]
local counted = 0
for i = 2, #ARGV, 2 do
  if redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', hk, ARGV[i + 1], 1)
    counted = counted + 1
  end
end
return counted
