-- Erase one resident (loaded after ingest_header.lua and erase_resident_fn.lua).
-- ARGV after the header: the resident id.
erase(ARGV[FIRST])
return 1
