-- One API key's token bucket: take one token, or say how long until one is there.
-- KEYS[1]: the bucket hash (tokens, ts). ARGV: refill rate (tokens/s), burst (capacity).
-- Returns {1, "0"} when admitted, {0, seconds to wait} when not. The clock is Redis's own
-- (TIME), so every serving process shares one bucket per key whatever their clocks say.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local admitted, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  admitted = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {admitted, tostring(wait)}
