-- Figure `contacts`, per group and ISO week: every known resident's number of contacts in
-- the week (0 for the known residents without one) as a histogram (buckets of table
-- histogram_buckets), the total, and nearest-rank percentiles among the active residents
-- (table quantiles) with how many residents lie at or below / at or above each value, for
-- suppression. Counts per resident above histogram_cap are counted as the cap.
CREATE OR REPLACE TEMP TABLE weekly_histogram AS
SELECT g, week, least(contacts, getvariable('histogram_cap')) AS n,
       count(*) AS residents, sum(contacts) AS contacts
FROM (SELECT unnest(output_groups(s, nb_g)) AS g, week, contacts FROM slice_weeks)
GROUP BY ALL;

WITH
totals AS (
    SELECT g, week, sum(residents) AS active, sum(contacts) AS contacts
    FROM weekly_histogram GROUP BY g, week
),
cumulative AS (
    SELECT h.*, t.active,
           sum(h.residents) OVER (PARTITION BY h.g, h.week ORDER BY h.n) AS at_or_below
    FROM weekly_histogram AS h JOIN totals AS t USING (g, week)
),
-- The value at rank ceil(q × active) is the smallest n whose cumulative count reaches it.
percentiles AS (
    SELECT g, week, q.name,
           min(n) AS value,
           arg_min(at_or_below, n) AS n_le,
           arg_min(active - at_or_below + residents, n) AS n_ge
    FROM cumulative CROSS JOIN quantiles AS q
    WHERE at_or_below >= greatest(ceil(q.q * active), 1)
    GROUP BY g, week, q.name
),
buckets AS (
    SELECT h.g, h.week, b.name, sum(h.residents) AS residents
    FROM weekly_histogram AS h
    JOIN histogram_buckets AS b ON h.n >= b.low AND (b.high IS NULL OR h.n <= b.high)
    GROUP BY ALL
),
long AS (
    SELECT g, week, name, value::DOUBLE AS value FROM percentiles
    UNION ALL SELECT g, week, name || '_n_le', n_le FROM percentiles
    UNION ALL SELECT g, week, name || '_n_ge', n_ge FROM percentiles
    UNION ALL SELECT g, week, name, residents FROM buckets
),
wide AS (
    PIVOT long ON name USING first(value) GROUP BY g, week
)
SELECT c.g, w.label AS week, w.week_start, c.known,
       coalesce(t.active, 0) AS active,
       coalesce(t.contacts, 0) AS contacts,
       c.known - coalesce(t.active, 0) AS h0,   -- known residents without a contact
       wide.* EXCLUDE (g, week),
       w.week_complete
FROM weekly_classes AS c
JOIN calendar_weeks AS w USING (week)
LEFT JOIN totals AS t USING (g, week)
LEFT JOIN wide USING (g, week)
ORDER BY c.g, c.week;
