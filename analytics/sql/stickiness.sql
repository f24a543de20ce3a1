-- Figure `stickiness`: mean daily actives over the week's observed days, weekly actives,
-- 28-day actives (the window's, = daily + weekly + monthly of `cadence`) and their ratios.
WITH
daily_actives AS (
    SELECT g, week_of(day) AS week, count(*) AS active_days
    FROM (SELECT unnest(output_groups(s, nb_g)) AS g, day FROM slice_days)
    GROUP BY g, week
),
weekly_actives AS (
    SELECT g, week, count(*) AS wau
    FROM (SELECT unnest(output_groups(s, nb_g)) AS g, week FROM slice_weeks)
    GROUP BY g, week
)
SELECT c.g, w.label AS week, w.week_start, w.days_observed,
       coalesce(d.active_days, 0) / w.days_observed AS dau_mean,
       coalesce(a.wau, 0) AS wau,
       c.daily + c.weekly + c.monthly AS mau,
       w.window_complete, w.week_complete
FROM weekly_classes AS c
JOIN calendar_weeks AS w USING (week)
LEFT JOIN daily_actives AS d USING (g, week)
LEFT JOIN weekly_actives AS a USING (g, week)
ORDER BY c.g, c.week;
