-- Figure `cadence`: residents by cadence class as of the end of each ISO week.
-- daily + weekly + monthly = active in the window; yearly = active in the yearly window but
-- not in this one; dormant = known, not active in the yearly window.
SELECT c.g, w.label AS week, w.week_start, c.known,
       c.daily, c.weekly, c.monthly,
       c.covered - (c.daily + c.weekly + c.monthly) AS yearly,
       c.known - c.covered AS dormant,
       w.window_complete, w.week_complete
FROM weekly_classes AS c
JOIN calendar_weeks AS w USING (week)
ORDER BY c.g, c.week;
