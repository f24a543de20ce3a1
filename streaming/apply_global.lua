-- Apply outbox entries to the engagement aggregates, each exactly once (loaded after
-- ingest_header.lua and aggregates_fn.lua; Redis Cluster only). KEYS[1]: the active-set
-- index (routes the call to the {eng} slot). ARGV[2]: msgpack {entry id "<slot tag>:<id>",
-- ...} in the order to apply; ARGV[2 + i]: the payload of the i-th entry, as
-- apply_group.lua stored it (msgpack {records *}; passed as its own argument, not nested in
-- ARGV[2], so it is unpacked once). An entry whose id is marked was applied before (a retry,
-- or another consumer recovering it) and is skipped. Returns how many were applied now.
local ids = cmsgpack.unpack(ARGV[2])
local done = {}
for _, id in ipairs(marked(APPLIED_PRE, ids, 1, #ids)) do done[id] = true end
local fresh = {}
for i, id in ipairs(ids) do
  if not done[id] then
    done[id] = true  -- an entry listed twice is applied once
    fresh[#fresh + 1] = id
    for _, records in ipairs(cmsgpack.unpack(ARGV[2 + i])) do
      apply_records(records, 1, #records)
    end
  end
end
finish_aggregates()
mark(APPLIED_PRE, fresh, 1, #fresh)
return #fresh
