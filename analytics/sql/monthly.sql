-- Figure `monthly`, per group and calendar month: monthly actives, mean daily actives over
-- the month's observed days, mean weekly actives over the ISO weeks whose Thursday falls in
-- the month, and their ratios to the monthly actives. A month the log covers only in part
-- (its first and last) is flagged: its actives are not divided by full weeks' (logdb.py).
WITH
month_actives AS (
    SELECT g, month, count(*) AS mau
    FROM (SELECT DISTINCT unnest(output_groups(s, nb_g)) AS g, s, rid, month_of(day) AS month
          FROM slice_days)
    GROUP BY g, month
),
daily_actives AS (
    SELECT g, month_of(day) AS month, count(*) AS active_days
    FROM (SELECT unnest(output_groups(s, nb_g)) AS g, day FROM slice_days)
    GROUP BY g, month
),
weekly_actives AS (
    SELECT g, month_of(week * 7) AS month, count(*) AS wau_sum   -- week * 7: its Thursday
    FROM (SELECT unnest(output_groups(s, nb_g)) AS g, week FROM slice_weeks)
    GROUP BY g, month
)
SELECT g.g, m.label AS month, m.days_observed, m.weeks,
       coalesce(a.mau, 0) AS mau,
       coalesce(d.active_days, 0) / m.days_observed AS dau_mean,
       CASE WHEN m.weeks > 0 THEN coalesce(w.wau_sum, 0) / m.weeks END AS wau_mean,
       m.days_observed = m.days_in_month AS month_complete
FROM groups AS g
CROSS JOIN calendar_months AS m
LEFT JOIN month_actives AS a ON a.g = g.g AND a.month = m.month
LEFT JOIN daily_actives AS d ON d.g = g.g AND d.month = m.month
LEFT JOIN weekly_actives AS w ON w.g = g.g AND w.month = m.month
ORDER BY g.g, m.month;
