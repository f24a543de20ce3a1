-- Write the outreach planner's records of many residents (ARGV after the header: resident
-- id, sent, pending, streak, paused_until, repeated). A record with nothing left to remember
-- is deleted; the others get the TTL, after which no rule needs them any more. A resident
-- whose profile is gone (erased while the plan was made) gets no record back.
-- ARGV: resident key prefix "<p>r:{", suffix "}:", TTL seconds, then the records.
local r_pre, r_suf, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local written = 0
for a = 4, #ARGV, 5 do
  local base = r_pre .. ARGV[a] .. r_suf
  local key = base .. 'outreach'
  local sent, pending, streak, paused = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if redis.call('EXISTS', base .. 'profile') == 0
      or (sent == '' and pending == '' and streak == '0' and paused == '0') then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'sent', sent, 'pending', pending, 'streak', streak,
               'paused_until', paused)
    redis.call('EXPIRE', key, ttl)
    written = written + 1
  end
end
return written
