-- Write the outreach planner's records of many residents. A record with nothing left to
-- remember is deleted; the others get the TTL, after which no rule needs them any more. A
-- resident whose profile is gone (erased while the plan was made) gets no record back.
-- ARGV: resident key prefix "<p>r:{", suffix "}:", TTL seconds, then one argument per
-- resident: id, sent, pending, streak, paused_until joined by \31.
local r_pre, r_suf, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local written = 0
for a = 4, #ARGV do
  local rid, sent, pending, streak, paused =
    string.match(ARGV[a], '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  local base = r_pre .. rid .. r_suf
  local key = base .. 'outreach'
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
