-- The erasure routine shared by the batch script and bouquet.streaming.state.erase_resident:
-- delete the resident's own keys, take them out of every active-resident set (listed in
-- the index, so no SCAN is needed), out of the last-contact ZSET and out of the outreach
-- planner's contactable set. Index entries whose set has expired are pruned on the way.
local function erase(rid)
  local base = R_PRE .. rid .. R_SUF
  for _, kind in ipairs(KINDS) do redis.call('DEL', base .. kind) end
  redis.call('ZREM', LAST, rid)
  redis.call('SREM', CONTACTABLE, rid)
  for _, k in ipairs(redis.call('SMEMBERS', AIDX)) do
    if redis.call('SREM', k, rid) == 0 and redis.call('EXISTS', k) == 0 then
      redis.call('SREM', AIDX, k)
    end
  end
end
