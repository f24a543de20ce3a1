-- What the outreach planner reads of many residents, in one call per chunk (ARGV after the
-- header are resident ids; key names are built here from the fixed parts the planner
-- passes, checked against bouquet.core.keys.Keys, so this needs a single Redis primary,
-- like the ingestion script).
-- ARGV: mode ("state" | "offers"), resident key prefix "<p>r:{", suffix "}:", bundles list
-- prefix "<p>rec:<version>:b:{", services list prefix, list suffix "}", profile fields
-- ("a,b,c"), then resident ids.
-- state: per resident {profile fields joined by \31 (absent: empty), record fields sent,
--   pending, streak, paused_until joined by \31}
-- offers: per resident {holdings joined by spaces, dismissed joined by spaces, packed
--   bundles list or "", packed services list or ""}
local mode, r_pre, r_suf = ARGV[1], ARGV[2], ARGV[3]
local b_pre, s_pre, l_suf = ARGV[4], ARGV[5], ARGV[6]
local fields = {}
for f in string.gmatch(ARGV[7], '[^,]+') do fields[#fields + 1] = f end
local out = {}
local function joined(values, sep)
  for i = 1, #values do if not values[i] then values[i] = '' end end
  return table.concat(values, sep)
end
for a = 8, #ARGV do
  local rid = ARGV[a]
  local base = r_pre .. rid .. r_suf
  if mode == 'state' then
    out[#out + 1] = joined(redis.call('HMGET', base .. 'profile', unpack(fields)), '\31')
    out[#out + 1] = joined(redis.call('HMGET', base .. 'outreach', 'sent', 'pending', 'streak',
                                      'paused_until'), '\31')
  else
    out[#out + 1] = table.concat(redis.call('SMEMBERS', base .. 'holdings'), ' ')
    out[#out + 1] = table.concat(redis.call('SMEMBERS', base .. 'dismissed'), ' ')
    local b, s = '', ''
    if b_pre ~= '' then
      b = redis.call('GET', b_pre .. rid .. l_suf) or ''
      s = redis.call('GET', s_pre .. rid .. l_suf) or ''
    end
    out[#out + 1] = b
    out[#out + 1] = s
  end
end
return out
