-- Figure `lifetime`, one row per group: every slice-resident's number of contacts over the
-- whole log; the share with exactly one, a histogram (table lifetime_buckets), nearest-rank
-- percentiles (table lifetime_quantiles) with how many lie at or below / at or above each,
-- and the share of all contacts made by the most active tenth (ceil(residents / 10)).
WITH
totals AS (
    SELECT unnest(output_groups(s, nb_g)) AS g, sum(contacts) AS total
    FROM slice_weeks GROUP BY s, rid, nb_g
),
histogram AS (
    SELECT g, total, count(*) AS residents FROM totals GROUP BY g, total
),
per_group AS (
    SELECT g, sum(residents) AS residents, sum(total * residents) AS contacts
    FROM histogram GROUP BY g
),
ranked AS (
    SELECT h.*, p.residents AS n, p.contacts AS group_contacts,
           sum(h.residents) OVER (PARTITION BY h.g ORDER BY h.total) AS at_or_below,
           sum(h.residents) OVER (PARTITION BY h.g ORDER BY h.total DESC) AS at_or_above
    FROM histogram AS h JOIN per_group AS p USING (g)
),
percentiles AS (
    SELECT g, q.name, min(total) AS value,
           arg_min(at_or_below, total) AS n_le, arg_min(at_or_above, total) AS n_ge
    FROM ranked CROSS JOIN lifetime_quantiles AS q
    WHERE at_or_below >= greatest(ceil(q.q * n), 1)
    GROUP BY g, q.name
),
-- The top tenth: whole histogram rows from the most active down, and part of the row
-- where the tenth ends.
top_tenth AS (
    SELECT g, sum(total * greatest(least(residents,
                                         ceil(n / 10) - (at_or_above - residents)), 0))
               AS top_contacts
    FROM ranked GROUP BY g
),
buckets AS (
    SELECT h.g, b.name, sum(h.residents) AS residents
    FROM histogram AS h
    JOIN lifetime_buckets AS b ON h.total >= b.low AND (b.high IS NULL OR h.total <= b.high)
    GROUP BY ALL
),
long AS (
    SELECT g, name, value::DOUBLE AS value FROM percentiles
    UNION ALL SELECT g, name || '_n_le', n_le FROM percentiles
    UNION ALL SELECT g, name || '_n_ge', n_ge FROM percentiles
    UNION ALL SELECT g, name, residents FROM buckets
),
wide AS (
    PIVOT long ON name USING first(value) GROUP BY g
)
SELECT g.g, coalesce(p.residents, 0) AS residents, coalesce(p.contacts, 0) AS contacts,
       ceil(coalesce(p.residents, 0) / 10)::BIGINT AS top10_residents,
       t.top_contacts / p.contacts AS top10_share,
       wide.* EXCLUDE (g)
FROM groups AS g
LEFT JOIN per_group AS p USING (g)
LEFT JOIN top_tenth AS t USING (g)
LEFT JOIN wide USING (g)
ORDER BY g.g;
