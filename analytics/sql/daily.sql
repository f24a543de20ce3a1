-- Figure `daily`: distinct active residents per group and UTC day.
WITH daily_actives AS (
    SELECT g, day, count(*) AS dau
    FROM (SELECT unnest(output_groups(s, nb_g)) AS g, day FROM slice_days)
    GROUP BY g, day
)
SELECT g.g, d.label AS day, coalesce(a.dau, 0) AS dau
FROM groups AS g
CROSS JOIN calendar_days AS d
LEFT JOIN daily_actives AS a ON a.g = g.g AND a.day = d.day
ORDER BY g.g, d.day;
