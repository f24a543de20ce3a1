-- Figure `cohorts`: a slice-resident's cohort is the calendar month of their first contact
-- (in the slice); `retained` at months_since = m counts the cohort's residents with a
-- contact in month cohort + m. Every month since a non-empty cohort up to the log's last
-- month has a row (zero when nobody came back).
WITH
active_months AS (
    SELECT DISTINCT s, rid, nb_g, month_of(day) AS month FROM slice_days
),
with_cohort AS (
    SELECT *, min(month) OVER (PARTITION BY s, rid) AS cohort FROM active_months
),
retained AS (
    SELECT g, cohort, month - cohort AS months_since, count(*) AS retained
    FROM (SELECT unnest(output_groups(s, nb_g)) AS g, cohort, month FROM with_cohort)
    GROUP BY ALL
),
sizes AS (
    SELECT g, cohort, retained AS cohort_size FROM retained WHERE months_since = 0
)
SELECT s.g, c.label AS cohort, m.month - s.cohort AS months_since, s.cohort_size,
       coalesce(r.retained, 0) AS retained
FROM sizes AS s
JOIN calendar_months AS c ON c.month = s.cohort
JOIN calendar_months AS m ON m.month >= s.cohort
LEFT JOIN retained AS r ON r.g = s.g AND r.cohort = s.cohort
                       AND r.months_since = m.month - s.cohort
ORDER BY s.g, s.cohort, months_since;
