-- The event log as every reader must see it: each event once, erased residents gone.
--
-- Input (created by bouquet.analytics.logdb before this file runs):
--   raw_events          the log's complete Parquet files (<root>/date=YYYY-MM-DD/part-*.parquet),
--                       read by column name, with `filename` and `file_row_number`; a column
--                       that older files lack reads as NULL
--   register_erasures   (resident_id, cutoff): the erasure register's entries for residents of
--                       this log (cutoff in epoch seconds). The register is keyed with the
--                       pseudonymisation secret, so only a process holding it can fill this;
--                       other engines leave it empty and rely on compaction (docs/privacy.md).
--
-- Output: the view `events`, read by every figure.

-- Copies of an event after the first: a batch re-delivered after a crash is written twice,
-- and compaction briefly leaves old and new files side by side. The first ingested copy
-- wins (ties: the file listed first, then the row). A 64-bit hash finds the candidates
-- cheaply; the exact event ids are compared only among them.
CREATE OR REPLACE TEMP TABLE repeated_copies AS
WITH suspect_hashes AS (
    SELECT hash(event_id) AS h
    FROM raw_events
    GROUP BY h
    HAVING count(*) > 1
),
ranked AS (
    SELECT filename, file_row_number,
           row_number() OVER (PARTITION BY event_id
                              ORDER BY ingested_at, filename, file_row_number) AS copy
    FROM raw_events
    WHERE hash(event_id) IN (SELECT h FROM suspect_hashes)
)
SELECT filename, file_row_number FROM ranked WHERE copy > 1;

-- Erasure cutoffs: a resident's events time-stamped at or before their latest erasure are
-- erased data (the `erase` event itself included); later events are a new start.
CREATE OR REPLACE TEMP TABLE erasures AS
SELECT resident_id, max(cutoff) AS cutoff
FROM (
    SELECT resident_id, epoch_us(ts) / 1e6 AS cutoff FROM raw_events WHERE type = 'erase'
    UNION ALL
    SELECT resident_id, cutoff FROM register_erasures
)
GROUP BY resident_id;

CREATE OR REPLACE TEMP VIEW events AS
SELECT e.*,
       (epoch_us(e.ts) // 86400000000)::INTEGER AS day   -- UTC day, days since 1970-01-01
FROM raw_events AS e
ANTI JOIN repeated_copies AS c USING (filename, file_row_number)
LEFT JOIN erasures AS x USING (resident_id)
WHERE x.cutoff IS NULL OR epoch_us(e.ts) / 1e6 > x.cutoff;
