-- Count each dead letter once per source position.
-- ARGV: marker TTL (s), dead-letter counts hash key, then pairs of (marker key, reason).
-- Returns how many were counted (a redelivered bad message is not counted twice).
local ttl, hk = tonumber(ARGV[1]), ARGV[2]
local counted = 0
for i = 3, #ARGV, 2 do
  if redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', hk, ARGV[i + 1], 1)
    counted = counted + 1
  end
end
return counted
