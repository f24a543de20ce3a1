-- What the outreach planner reads of many residents, in one call per chunk (ARGV[8]: the
-- resident ids joined by \31, one argument rather than a thousand, which the client would
-- encode one by one; key names are built here from the fixed parts the planner passes,
-- checked against bouquet.core.keys.Keys; on a Redis Cluster the residents of one call share
-- a hash slot, and KEYS[1], one of their keys, only routes the call there). The reply is
-- column by column — one array per field, one entry per resident, "" when absent — so the
-- client parses arrays, not residents.
-- ARGV: mode ("state" | "offers"), resident key prefix "<p>r:{", suffix "}:", bundles list
-- prefix "<p>rec:<version>:b:{", services list prefix, list suffix "}", profile fields
-- ("a,b,c"), resident ids.
-- state: the profile fields, then the record's sent, pending, streak, paused_until
-- offers: holdings joined by spaces, dismissed joined by spaces, packed bundles list,
--   packed services list
-- contact: the profile's contact consent (the planner's last check before recording)
local mode, r_pre, r_suf = ARGV[1], ARGV[2], ARGV[3]
local b_pre, s_pre, l_suf = ARGV[4], ARGV[5], ARGV[6]
local fields = {}
for f in string.gmatch(ARGV[7], '[^,]+') do fields[#fields + 1] = f end
local record = {'sent', 'pending', 'streak', 'paused_until'}
local width = 4
if mode == 'state' then width = #fields + #record elseif mode == 'contact' then width = 1 end
local cols = {}
for j = 1, width do cols[j] = {} end
local i = 0
for rid in string.gmatch(ARGV[8], '[^\31]+') do
  local base = r_pre .. rid .. r_suf
  i = i + 1
  if mode == 'state' then
    local values = redis.call('HMGET', base .. 'profile', unpack(fields))
    for j = 1, #fields do cols[j][i] = values[j] or '' end
    values = redis.call('HMGET', base .. 'outreach', unpack(record))
    for j = 1, #record do cols[#fields + j][i] = values[j] or '' end
  elseif mode == 'contact' then
    cols[1][i] = redis.call('HGET', base .. 'profile', 'contact') or ''
  else
    cols[1][i] = table.concat(redis.call('SMEMBERS', base .. 'holdings'), ' ')
    cols[2][i] = table.concat(redis.call('SMEMBERS', base .. 'dismissed'), ' ')
    if b_pre ~= '' then
      cols[3][i] = redis.call('GET', b_pre .. rid .. l_suf) or ''
      cols[4][i] = redis.call('GET', s_pre .. rid .. l_suf) or ''
    else
      cols[3][i] = ''
      cols[4][i] = ''
    end
  end
end
return cols
