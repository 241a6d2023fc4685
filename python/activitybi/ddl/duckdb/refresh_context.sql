-- Rebuilds context_cache from the stream: one JSON summary per customer of the last
-- 30 days. Run by the process that owns the warehouse at least every 5 minutes (the
-- Snowflake DDL runs the same as a TASK). Not numbered: `init` does not apply it.
INSERT OR REPLACE INTO context_cache
WITH recent AS (
    SELECT coalesce(customer, anonymous_customer_id) AS who, *
    FROM claude_stream
    WHERE ts >= (now() AT TIME ZONE 'UTC') - INTERVAL 30 DAY
      AND coalesce(customer, anonymous_customer_id) IS NOT NULL
),
totals AS (
    SELECT who, count(*) AS events, count(DISTINCT _session_id) AS sessions, max(ts) AS last_seen
    FROM recent GROUP BY who
),
activities AS (
    SELECT who, list({'activity': activity, 'count': n, 'last': last} ORDER BY n DESC, activity)[1:20] AS top
    FROM (SELECT who, activity, count(*) AS n, strftime(max(ts), '%Y-%m-%dT%H:%M:%S.%gZ') AS last
          FROM recent GROUP BY who, activity)
    GROUP BY who
),
tools AS (
    SELECT who, list({'tool': tool, 'calls': n, 'p95_ms': p95, 'errors': errors} ORDER BY n DESC, tool)[1:20] AS tools
    FROM (
        SELECT who, feature_json->>'tool' AS tool, count(*) AS n,
               round(quantile_cont(TRY_CAST(feature_json->>'latency_ms' AS DOUBLE), 0.95), 3) AS p95,
               count(*) FILTER (WHERE feature_json->>'outcome' <> 'ok') AS errors
        FROM recent WHERE activity = 'called_tool' GROUP BY who, tool
    )
    GROUP BY who
)
SELECT
    t.who,
    to_json({
        'window_days': 30, 'events': t.events, 'sessions': t.sessions,
        'last_seen': strftime(t.last_seen, '%Y-%m-%dT%H:%M:%S.%gZ'),
        'top_activities': coalesce(a.top, []), 'tools': coalesce(o.tools, [])
    }),
    now() AT TIME ZONE 'UTC',
    coalesce((SELECT version FROM context_cache c WHERE c.customer_id = t.who), 0) + 1
FROM totals t
LEFT JOIN activities a USING (who)
LEFT JOIN tools o USING (who);
