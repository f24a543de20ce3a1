-- The contacts of the selected cadence classes (table selected_classes), per slice,
-- resident and day, and per slice, resident and ISO week. A *slice* is what a resident's
-- figures count: s = 0 is all their contacts (the city, and their neighbourhood); any other
-- s is a group of table `groups` (one domain, factor or channel) and counts only the
-- contacts there, so that a resident is "daily in mobility" on mobility contacts alone.
-- Variables: first_week, last_week, window_weeks, yearly_weeks, daily_min_days,
-- weekly_min_weeks.

-- A dimension's groups follow its ENUM's order, so a value's group is the dimension's first
-- group (variables domain_g0, factor_g0, channel_g0) plus the value's ENUM code.
CREATE OR REPLACE TEMP TABLE slice_days AS
WITH picked AS (
    SELECT * FROM contact_days
    WHERE cadence_class IN (SELECT cadence_class FROM selected_classes)
),
city AS (
    SELECT rid, day, sum(contacts)::INTEGER AS contacts FROM picked GROUP BY rid, day
)
SELECT 0::SMALLINT AS s, rid, r.nb_g, day, contacts
FROM city JOIN resident_groups AS r USING (rid)
UNION ALL
SELECT (getvariable('domain_g0') + enum_code(domain))::SMALLINT, rid, NULL, day, sum(contacts)
FROM picked GROUP BY domain, rid, day
UNION ALL
SELECT (getvariable('factor_g0') + enum_code(factor))::SMALLINT, rid, NULL, day, sum(contacts)
FROM picked GROUP BY factor, rid, day
UNION ALL
SELECT (getvariable('channel_g0') + enum_code(channel))::SMALLINT, rid, NULL, day, sum(contacts)
FROM picked GROUP BY channel, rid, day;

CREATE OR REPLACE TEMP TABLE slice_weeks AS
SELECT s, rid, nb_g, week_of(day)::INTEGER AS week,
       count(*)::INTEGER AS active_days, sum(contacts)::INTEGER AS contacts
FROM slice_days
GROUP BY s, rid, nb_g, week;

-- Cadence classes at the end of every ISO week (docs/engagement.md, "Cadence"), per output
-- group: daily / weekly / monthly among the residents active in the trailing window,
-- `covered` = active in the trailing yearly_weeks, `known` = known by then.
CREATE OR REPLACE TEMP TABLE weekly_classes AS
WITH
-- Each active week of a slice-resident "owns" the as-of weeks from itself until their next
-- active week, at most the window (afterwards the window holds none of its days) and at
-- most the log's last week: so each (slice-resident, as-of week) whose window holds
-- activity is seen exactly once. The window ending at an owned as-of week holds this
-- active week and some of the few before it (`recent`: at most window_weeks - 1 of them).
active_weeks AS (
    SELECT s, rid, nb_g, week,
           coalesce(lead(week) OVER by_resident, getvariable('last_week') + 1) - week
               AS gap,
           list(week) OVER recent AS recent_weeks,
           list(active_days) OVER recent AS recent_days
    FROM slice_weeks
    WINDOW by_resident AS (PARTITION BY s, rid ORDER BY week),
           recent AS (PARTITION BY s, rid ORDER BY week
                      ROWS BETWEEN getvariable('window_weeks') - 1 PRECEDING AND CURRENT ROW)
),
as_of_weeks AS (
    SELECT s, nb_g, recent_weeks, recent_days, week + step AS as_of
    FROM (
        SELECT *, unnest(range(least(getvariable('window_weeks'), gap,
                                     getvariable('last_week') + 1 - week))) AS step
        FROM active_weeks
    )
),
-- Active days and active weeks in the window ending at each as-of week.
windows AS (
    SELECT s, nb_g, as_of,
           list_sum([r[2] FOR r IN list_zip(recent_weeks, recent_days)
                     IF r[1] > as_of - getvariable('window_weeks')]) AS days_in_window,
           len([w FOR w IN recent_weeks IF w > as_of - getvariable('window_weeks')])
               AS weeks_in_window
    FROM as_of_weeks
),
classes AS (
    SELECT unnest(output_groups(s, nb_g)) AS g, as_of AS week,
           CASE WHEN days_in_window >= getvariable('daily_min_days') THEN 'daily'
                WHEN weeks_in_window >= getvariable('weekly_min_weeks') THEN 'weekly'
                ELSE 'monthly' END AS cadence
    FROM windows
),
class_counts AS (
    SELECT g, week,
           count(*) FILTER (WHERE cadence = 'daily') AS daily,
           count(*) FILTER (WHERE cadence = 'weekly') AS weekly,
           count(*) FILTER (WHERE cadence = 'monthly') AS monthly
    FROM classes GROUP BY g, week
),
-- Covered by the yearly window: +1 from an active week, -1 once the window has passed it
-- (or the next active week takes over); a running sum gives the count per as-of week.
coverage_steps AS (
    SELECT unnest(output_groups(s, nb_g)) AS g, week, 1 AS step FROM active_weeks
    UNION ALL
    SELECT unnest(output_groups(s, nb_g)), week + least(getvariable('yearly_weeks'), gap), -1
    FROM active_weeks
),
coverage AS (
    SELECT g, week, sum(step) AS change FROM coverage_steps GROUP BY g, week
),
-- Known residents: the city and its neighbourhoods know a resident from their first event
-- of any type; a domain, factor or channel from their first contact there.
first_weeks AS (
    SELECT 0 AS g, week_of(first_day) AS week FROM residents
    UNION ALL
    SELECT nb_g, week_of(first_day) FROM resident_groups
    UNION ALL
    SELECT s, min(week) FROM slice_weeks WHERE s <> 0 GROUP BY s, rid
),
newly_known AS (
    SELECT g, week, count(*) AS n FROM first_weeks GROUP BY g, week
),
grid AS (
    SELECT g.g, w.week FROM groups AS g CROSS JOIN calendar_weeks AS w
)
SELECT grid.g, grid.week,
       coalesce(c.daily, 0) AS daily,
       coalesce(c.weekly, 0) AS weekly,
       coalesce(c.monthly, 0) AS monthly,
       sum(coalesce(v.change, 0)) OVER running AS covered,
       sum(coalesce(k.n, 0)) OVER running AS known
FROM grid
LEFT JOIN class_counts AS c USING (g, week)
LEFT JOIN coverage AS v USING (g, week)
LEFT JOIN newly_known AS k USING (g, week)
WINDOW running AS (PARTITION BY grid.g ORDER BY grid.week
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);
