-- Write the outreach planner's records of many residents. A record with nothing left to
-- remember is deleted; the others get the TTL, after which no rule needs them any more.
-- The planner's last check is made here, atomically with the write: a resident being
-- nudged whose profile no longer says contact consent (withdrawn, or erased, while the plan
-- was made) gets no new record, and is returned, so that the nudge is dropped; a resident
-- whose profile is gone gets no record at all.
-- KEYS[1]: one of the residents' keys, which routes the call on a Redis Cluster (the residents
-- of one call share a hash slot there).
-- ARGV: resident key prefix "<p>r:{", suffix "}:", TTL seconds, then the records, one per
-- line ("\30"): nudged ("1"/"0"), id, sent, pending, streak, paused_until joined by \31.
-- Returns the ids whose nudge must be dropped.
local r_pre, r_suf, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local dropped = {}
for line in string.gmatch(ARGV[4], '[^\30]+') do
  local nudged, rid, sent, pending, streak, paused = string.match(line,
    '^([01])\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  local base = r_pre .. rid .. r_suf
  local key = base .. 'outreach'
  local contact = redis.call('HGET', base .. 'profile', 'contact')
  if nudged == '1' and contact ~= '1' then
    dropped[#dropped + 1] = rid
  elseif not contact or (sent == '' and pending == '' and streak == '0' and paused == '0') then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'sent', sent, 'pending', pending, 'streak', streak,
               'paused_until', paused)
    redis.call('EXPIRE', key, ttl)
  end
end
return dropped
