-- Shared start of the ingestion scripts (apply_batch.lua, erase_resident.lua): the fixed
-- parts of the key names (checked against bouquet.core.keys.Keys at start-up by
-- bouquet.streaming.state), TTLs and caps, and the per-resident key kinds to erase.
-- ARGV[1..14] are these; a script's own arguments start at ARGV[FIRST].
local SEEN_PRE, R_PRE, R_SUF, A_PRE, C_PRE = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local LAST, AIDX, FIDX = ARGV[6], ARGV[7], ARGV[8]
local SEEN_TTL, CAP, COUNTER_TTL = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local RECENT_TTL = tonumber(ARGV[12])
local KINDS = {}
for kind in string.gmatch(ARGV[13], '[^,]+') do KINDS[#KINDS + 1] = kind end
local CONTACTABLE = ARGV[14]
local FIRST = 15
