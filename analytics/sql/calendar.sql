-- Days, ISO weeks and calendar months from the log's first event day to its last, and the
-- output groups' helpers. Variables (SET VARIABLE by bouquet.analytics.logdb):
-- first_day, last_day (days since 1970-01-01), window_days.

-- Weeks start on Monday: week 0 is the week of 1970-01-01 (a Thursday), from 1969-12-29.
CREATE OR REPLACE TEMP MACRO week_of(day) AS (day + 3) // 7;
CREATE OR REPLACE TEMP MACRO monday_of(week) AS DATE '1970-01-01' + (week * 7 - 3)::INTEGER;
CREATE OR REPLACE TEMP MACRO month_of(day) AS
    (year(DATE '1970-01-01' + day::INTEGER) - 1970) * 12
    + month(DATE '1970-01-01' + day::INTEGER) - 1;
-- The output groups a slice's row counts in: the city's slice (s = 0) counts in the whole
-- city (group 0) and in the resident's neighbourhood; any other slice in its own group.
CREATE OR REPLACE TEMP MACRO output_groups(s, nb_g) AS
    CASE WHEN s = 0 THEN [0, nb_g] ELSE [s] END;

CREATE OR REPLACE TEMP TABLE calendar_days AS
SELECT day::INTEGER AS day, week_of(day)::INTEGER AS week, month_of(day)::INTEGER AS month,
       strftime(DATE '1970-01-01' + day::INTEGER, '%Y-%m-%d') AS label
FROM range(getvariable('first_day'), getvariable('last_day') + 1) AS t(day);

-- A week's observed days lie within the log's first and last day; its window (the trailing
-- window_days ending on its Sunday) is complete when the log covers all of it.
CREATE OR REPLACE TEMP TABLE calendar_weeks AS
SELECT week::INTEGER AS week,
       strftime(monday_of(week), '%G-W%V') AS label,
       monday_of(week) AS week_start,
       least(week * 7 + 3, getvariable('last_day'))
           - greatest(week * 7 - 3, getvariable('first_day')) + 1 AS days_observed,
       week * 7 + 3 - getvariable('window_days') + 1 >= getvariable('first_day')
           AS window_complete,
       week * 7 + 3 <= getvariable('last_day') AS week_complete
FROM range(week_of(getvariable('first_day')), week_of(getvariable('last_day')) + 1) AS t(week);

-- A calendar month's weeks are the ISO weeks whose Thursday falls in it (the ISO rule).
CREATE OR REPLACE TEMP TABLE calendar_months AS
SELECT month::INTEGER AS month,
       printf('%04d-%02d', 1970 + month // 12, month % 12 + 1) AS label,
       (SELECT count(*) FROM calendar_days AS d WHERE d.month = m.month) AS days_observed,
       (SELECT count(*) FROM calendar_weeks AS w WHERE month_of(w.week * 7) = m.month)
           AS weeks,
       day(last_day(make_date((1970 + month // 12)::INTEGER, (month % 12 + 1)::INTEGER, 1)))
           AS days_in_month
FROM range(month_of(getvariable('first_day')), month_of(getvariable('last_day')) + 1)
     AS m(month);
