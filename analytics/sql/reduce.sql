-- The log reduced once per state of its files to what every figure reads: one row per
-- resident, one row per (resident, day, class, domain, factor, channel) with its number of
-- contacts, and the events that carry a recommendation id.
--
-- Input (besides the view `events`, event_log.sql), small tables made by
-- bouquet.analytics.logdb from the project's single definitions:
--   event_classes(type, cadence_class)   core/cadence.py: use, response, exposure
--   item_attributes(service_id, bundle_id, domain, factor)   the catalog's answer per pair
--   funnel_stages(type, stage)            view → shown, click → opened, ...
--   unverified_ids(recommendation_id)     ids whose signature does not verify
-- and the ENUM types domain_t, factor_t, channel_t, class_t, stage_t.

-- Residents: a dense number, the day of their first event of any type (a declared profile
-- makes a resident known), and the neighbourhood of their latest profile event that
-- declares one (files written before typed columns existed declare it in `context`).
CREATE OR REPLACE TEMP TABLE residents AS
WITH per_resident AS (
    SELECT resident_id,
           min(day) AS first_day,
           max_by(declared, (ts, ingested_at)) FILTER (WHERE declared IS NOT NULL)
               AS neighbourhood
    FROM (
        SELECT resident_id, day, ts, ingested_at,
               CASE WHEN type = 'profile'
                    THEN coalesce(neighbourhood,
                                  json_extract_string(context, '$.neighbourhood')) END
                   AS declared
        FROM events
    )
    GROUP BY resident_id
)
SELECT (row_number() OVER (ORDER BY resident_id) - 1)::INTEGER AS rid,
       resident_id,
       first_day,
       coalesce(neighbourhood, '_unknown') AS neighbourhood
FROM per_resident;

-- Contacts per resident, day, cadence class and slice values.
CREATE OR REPLACE TEMP TABLE contact_days AS
SELECT r.rid,
       e.day,
       c.cadence_class::class_t AS cadence_class,
       coalesce(i.domain, '_unknown')::domain_t AS domain,
       coalesce(i.factor, '_unknown')::factor_t AS factor,
       coalesce(e.channel, '_unknown')::channel_t AS channel,
       count(*)::INTEGER AS contacts
FROM events AS e
JOIN event_classes AS c USING (type)
JOIN residents AS r USING (resident_id)
LEFT JOIN item_attributes AS i
       ON i.service_id IS NOT DISTINCT FROM e.service_id
      AND i.bundle_id IS NOT DISTINCT FROM e.bundle_id
GROUP BY ALL;

-- Arms of the experiment: (model version, variant) of every id that verifies, and the
-- `unattributed` row for every id that does not.
CREATE OR REPLACE TEMP TABLE arms AS
SELECT (row_number() OVER (ORDER BY model_version, variant) - 1)::SMALLINT AS arm_id,
       model_version, variant
FROM (
    SELECT DISTINCT
           CASE WHEN u.recommendation_id IS NULL
                THEN split_part(e.recommendation_id, '.', 1) ELSE 'unattributed' END
               AS model_version,
           CASE WHEN u.recommendation_id IS NULL
                THEN split_part(e.recommendation_id, '.', 2) ELSE 'unattributed' END
               AS variant
    FROM events AS e
    JOIN funnel_stages USING (type)
    LEFT JOIN unverified_ids AS u USING (recommendation_id)
    WHERE e.recommendation_id IS NOT NULL
);

-- Funnel events: a stage's event type with a recommendation id, credited to its arm.
CREATE OR REPLACE TEMP TABLE funnel_events AS
SELECT r.rid,
       e.day,
       f.stage::stage_t AS stage,
       a.arm_id,
       coalesce(i.domain, '_unknown')::domain_t AS domain,
       coalesce(i.factor, '_unknown')::factor_t AS factor,
       coalesce(e.channel, '_unknown')::channel_t AS channel
FROM events AS e
JOIN funnel_stages AS f USING (type)
JOIN residents AS r USING (resident_id)
LEFT JOIN unverified_ids AS u USING (recommendation_id)
JOIN arms AS a
  ON a.model_version = CASE WHEN u.recommendation_id IS NULL
                            THEN split_part(e.recommendation_id, '.', 1) ELSE 'unattributed' END
 AND a.variant = CASE WHEN u.recommendation_id IS NULL
                      THEN split_part(e.recommendation_id, '.', 2) ELSE 'unattributed' END
LEFT JOIN item_attributes AS i
       ON i.service_id IS NOT DISTINCT FROM e.service_id
      AND i.bundle_id IS NOT DISTINCT FROM e.bundle_id
WHERE e.recommendation_id IS NOT NULL;
