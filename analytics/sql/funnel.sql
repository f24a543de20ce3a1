-- The recommendation funnel per arm (docs/engagement.md, "Recommendation funnel"):
-- `<stage>_events` counts the arm's attributed events of the stage; `residents_shown` the
-- residents shown at least one of its recommendations; `<stage>_residents` those of them
-- who also reached the stage through the arm. Variables: funnel_since_day (events from that
-- day on), funnel_weekly (one row per ISO week too), funnel_by (`all` or the dimension
-- whose values break each arm down; a resident counts in a slice through the events they
-- had there, and in their own neighbourhood).
WITH
keyed AS (
    SELECT f.rid, f.stage, f.arm_id,
           CASE getvariable('funnel_by')
                WHEN 'neighbourhood' THEN r.neighbourhood
                WHEN 'domain' THEN f.domain::VARCHAR
                WHEN 'factor' THEN f.factor::VARCHAR
                WHEN 'channel' THEN f.channel::VARCHAR
                ELSE 'all' END AS value,
           CASE WHEN getvariable('funnel_weekly') THEN week_of(f.day) ELSE -1 END AS week   -- -1: all weeks
    FROM funnel_events AS f
    JOIN residents AS r USING (rid)
    WHERE f.day >= getvariable('funnel_since_day')
),
events AS (
    SELECT arm_id, value, week,
           count(*) FILTER (WHERE stage = 'shown') AS shown_events,
           count(*) FILTER (WHERE stage = 'opened') AS opened_events,
           count(*) FILTER (WHERE stage = 'subscribed') AS subscribed_events,
           count(*) FILTER (WHERE stage = 'used') AS used_events
    FROM keyed GROUP BY arm_id, value, week
),
reached AS (   -- each resident once per arm, slice, week and stage
    SELECT DISTINCT arm_id, value, week, stage, rid FROM keyed
),
shown AS (
    SELECT arm_id, value, week, rid FROM reached WHERE stage = 'shown'
),
residents AS (
    SELECT arm_id, value, week,
           count(*) FILTER (WHERE stage = 'shown') AS residents_shown,
           count(*) FILTER (WHERE stage = 'opened') AS opened_residents,
           count(*) FILTER (WHERE stage = 'subscribed') AS subscribed_residents,
           count(*) FILTER (WHERE stage = 'used') AS used_residents
    FROM reached SEMI JOIN shown USING (arm_id, value, week, rid)
    GROUP BY arm_id, value, week
)
SELECT getvariable('funnel_by') AS dimension, e.value,
       a.model_version, a.variant, w.label AS week,
       a.model_version || ':' || a.variant AS arm,
       e.shown_events, e.opened_events, e.subscribed_events, e.used_events,
       coalesce(r.residents_shown, 0) AS residents_shown,
       coalesce(r.opened_residents, 0) AS opened_residents,
       coalesce(r.subscribed_residents, 0) AS subscribed_residents,
       coalesce(r.used_residents, 0) AS used_residents
FROM events AS e
JOIN arms AS a ON a.arm_id = e.arm_id
LEFT JOIN residents AS r
       ON r.arm_id = e.arm_id AND r.value = e.value AND r.week = e.week
LEFT JOIN calendar_weeks AS w ON w.week = e.week
ORDER BY e.value, a.model_version, a.variant, e.week;
