-- Governance, Snowflake only: customer isolation, a credit cap, the context refresh task.
--
-- Privileges: CREATE ROW ACCESS POLICY / CREATE STREAM / CREATE TASK on the schema,
-- EXECUTE TASK on the account, and ACCOUNTADMIN for the resource monitor and for
-- CREATE WAREHOUSE ... RESOURCE_MONITOR (run `activitybi init` once with such a role).
-- Every statement is idempotent: IF NOT EXISTS, OR REPLACE, or an ALTER guarded by a check.
--
-- fakesnow (the test emulator) runs the access-mapping table, its seed row and the
-- context_summary view; it cannot run row access policies, resource monitors, warehouses,
-- streams, tasks or Snowflake Scripting blocks: SnowflakeWarehouse(emulator=True) skips
-- those by kind and reports them, and tests/test_snowflake.py checks their text instead
-- (and runs the task's MERGE against claude_stream in place of the stream).

-- ---------------------------------------------------------------------------------------
-- 1. Customer isolation: a row access policy on every table that holds a customer.
--
-- Design (mapping table): a session may read a row when the session's CURRENT_USER() or
-- CURRENT_ROLE() is mapped to the row's customer in activitybi_customer_access, or to '*'
-- (every customer). Give each customer-facing Snowflake user (or role) its customer:
--     INSERT INTO activitybi_customer_access (principal, customer) VALUES ('ANA_SVC', 'ana@example.com');
-- The loader (its NOT EXISTS dedupe must see every row) and the task owner need '*':
-- the role that runs `activitybi init` is mapped to '*' below. Principals are stored as
-- Snowflake returns them (unquoted names are upper case). Rows whose customer is NULL
-- (anonymous events) are visible to '*' principals only. The mapping table itself carries
-- no policy: grant it to administrators only.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS activitybi_customer_access (
    principal  VARCHAR NOT NULL,
    customer   VARCHAR NOT NULL,
    granted_at TIMESTAMP_NTZ NOT NULL DEFAULT SYSDATE()
);

INSERT INTO activitybi_customer_access (principal, customer, granted_at)
SELECT CURRENT_ROLE(), '*', SYSDATE()
WHERE CURRENT_ROLE() IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM activitybi_customer_access
      WHERE principal = CURRENT_ROLE() AND customer = '*'
  );

CREATE ROW ACCESS POLICY IF NOT EXISTS activitybi_customer_policy
AS (row_customer VARCHAR) RETURNS BOOLEAN ->
    EXISTS (
        SELECT 1 FROM activitybi_customer_access a
        WHERE a.principal IN (CURRENT_USER(), CURRENT_ROLE())
          AND (a.customer = row_customer OR a.customer = '*')
    );

-- CREATE ... IF NOT EXISTS keeps an older body: set the current one.
ALTER ROW ACCESS POLICY activitybi_customer_policy SET BODY ->
    EXISTS (
        SELECT 1 FROM activitybi_customer_access a
        WHERE a.principal IN (CURRENT_USER(), CURRENT_ROLE())
          AND (a.customer = row_customer OR a.customer = '*')
    );

-- The landing table holds raw lines of every customer: '*' principals only.
CREATE ROW ACCESS POLICY IF NOT EXISTS activitybi_loader_policy
AS (line VARIANT) RETURNS BOOLEAN ->
    EXISTS (
        SELECT 1 FROM activitybi_customer_access a
        WHERE a.principal IN (CURRENT_USER(), CURRENT_ROLE()) AND a.customer = '*'
    );

-- Attach the policies, each only when the table has no row access policy yet (a table
-- takes one, and ADD fails when one is there). claude_stream_enriched, a view over
-- claude_stream, is filtered by the policy of its table.
EXECUTE IMMEDIATE $$
DECLARE
    n INTEGER;
BEGIN
    SELECT COUNT(*) INTO :n FROM TABLE(INFORMATION_SCHEMA.POLICY_REFERENCES(
        REF_ENTITY_NAME => 'claude_stream', REF_ENTITY_DOMAIN => 'table'))
    WHERE POLICY_KIND = 'ROW_ACCESS_POLICY';
    IF (n = 0) THEN
        ALTER TABLE claude_stream ADD ROW ACCESS POLICY activitybi_customer_policy ON (customer);
    END IF;

    SELECT COUNT(*) INTO :n FROM TABLE(INFORMATION_SCHEMA.POLICY_REFERENCES(
        REF_ENTITY_NAME => 'insight_atoms', REF_ENTITY_DOMAIN => 'table'))
    WHERE POLICY_KIND = 'ROW_ACCESS_POLICY';
    IF (n = 0) THEN
        ALTER TABLE insight_atoms ADD ROW ACCESS POLICY activitybi_customer_policy ON (customer_id);
    END IF;

    SELECT COUNT(*) INTO :n FROM TABLE(INFORMATION_SCHEMA.POLICY_REFERENCES(
        REF_ENTITY_NAME => 'context_cache', REF_ENTITY_DOMAIN => 'table'))
    WHERE POLICY_KIND = 'ROW_ACCESS_POLICY';
    IF (n = 0) THEN
        ALTER TABLE context_cache ADD ROW ACCESS POLICY activitybi_customer_policy ON (customer_id);
    END IF;

    SELECT COUNT(*) INTO :n FROM TABLE(INFORMATION_SCHEMA.POLICY_REFERENCES(
        REF_ENTITY_NAME => 'artifacts', REF_ENTITY_DOMAIN => 'table'))
    WHERE POLICY_KIND = 'ROW_ACCESS_POLICY';
    IF (n = 0) THEN
        ALTER TABLE artifacts ADD ROW ACCESS POLICY activitybi_customer_policy ON (customer_id);
    END IF;

    SELECT COUNT(*) INTO :n FROM TABLE(INFORMATION_SCHEMA.POLICY_REFERENCES(
        REF_ENTITY_NAME => 'query_audit', REF_ENTITY_DOMAIN => 'table'))
    WHERE POLICY_KIND = 'ROW_ACCESS_POLICY';
    IF (n = 0) THEN
        ALTER TABLE query_audit ADD ROW ACCESS POLICY activitybi_customer_policy ON (customer_id);
    END IF;

    SELECT COUNT(*) INTO :n FROM TABLE(INFORMATION_SCHEMA.POLICY_REFERENCES(
        REF_ENTITY_NAME => '_activitybi_landing', REF_ENTITY_DOMAIN => 'table'))
    WHERE POLICY_KIND = 'ROW_ACCESS_POLICY';
    IF (n = 0) THEN
        ALTER TABLE _activitybi_landing ADD ROW ACCESS POLICY activitybi_loader_policy ON (v);
    END IF;

    RETURN 'row access policies attached';
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 2. Credits: a resource monitor with a monthly quota on the warehouse activitybi uses.
-- IF NOT EXISTS: init never resets a quota an operator has changed since
-- (ALTER RESOURCE MONITOR activitybi_monitor SET CREDIT_QUOTA = ...).
-- Point SNOWFLAKE_WAREHOUSE at ACTIVITYBI_WH so the loads and queries count against it too.
-- ---------------------------------------------------------------------------------------
CREATE RESOURCE MONITOR IF NOT EXISTS activitybi_monitor WITH
    CREDIT_QUOTA = 100
    FREQUENCY = MONTHLY
    START_TIMESTAMP = IMMEDIATELY
    TRIGGERS
        ON 75 PERCENT DO NOTIFY
        ON 100 PERCENT DO SUSPEND
        ON 110 PERCENT DO SUSPEND_IMMEDIATE;

CREATE WAREHOUSE IF NOT EXISTS activitybi_wh WITH
    WAREHOUSE_SIZE = 'XSMALL'
    AUTO_SUSPEND = 60
    AUTO_RESUME = TRUE
    INITIALLY_SUSPENDED = TRUE
    RESOURCE_MONITOR = activitybi_monitor;

ALTER WAREHOUSE activitybi_wh SET RESOURCE_MONITOR = activitybi_monitor;

-- ---------------------------------------------------------------------------------------
-- 3. context_cache, refreshed every 5 minutes: one JSON summary per customer (customer, or
-- the anonymous id) of the last 30 days, built from claude_stream and insight_atoms. The
-- summary is the view context_summary (always fresh; the same JSON as DuckDB's
-- refresh_context.sql, plus the latest insight per subject and metric). The task merges it
-- in for the customers with new rows in an append-only stream of claude_stream, so it
-- wakes the warehouse only when events arrived (a warehouse resumed every 5 minutes for
-- nothing would bill about 140 credits a month). Insight atoms arrive as learned_insight
-- events, so the stream covers them. version goes up by one at each refresh.
-- ---------------------------------------------------------------------------------------
CREATE OR REPLACE VIEW context_summary AS
WITH recent AS (
    SELECT COALESCE(customer, anonymous_customer_id) AS who, activity, ts, _session_id, feature_json
    FROM claude_stream
    WHERE ts >= DATEADD(day, -30, SYSDATE())
      AND COALESCE(customer, anonymous_customer_id) IS NOT NULL
),
totals AS (
    SELECT who, COUNT(*) AS events, COUNT(DISTINCT _session_id) AS sessions,
           TO_VARCHAR(MAX(ts), 'YYYY-MM-DD"T"HH24:MI:SS.FF3"Z"') AS last_seen
    FROM recent
    GROUP BY who
),
activities AS (
    SELECT
        who,
        ARRAY_AGG(OBJECT_CONSTRUCT_KEEP_NULL('activity', activity, 'count', n, 'last', last))
            WITHIN GROUP (ORDER BY n DESC, activity) AS top
    FROM (
        SELECT who, activity, COUNT(*) AS n,
               TO_VARCHAR(MAX(ts), 'YYYY-MM-DD"T"HH24:MI:SS.FF3"Z"') AS last
        FROM recent
        GROUP BY who, activity
        QUALIFY ROW_NUMBER() OVER (PARTITION BY who ORDER BY n DESC, activity) <= 20
    )
    GROUP BY who
),
tools AS (
    SELECT
        who,
        ARRAY_AGG(OBJECT_CONSTRUCT_KEEP_NULL('tool', tool, 'calls', n, 'p95_ms', p95, 'errors', errors))
            WITHIN GROUP (ORDER BY n DESC, tool) AS tools
    FROM (
        SELECT who, feature_json:tool::VARCHAR AS tool, COUNT(*) AS n,
               ROUND(PERCENTILE_CONT(0.95) WITHIN GROUP (
                   ORDER BY TRY_TO_DOUBLE(feature_json:latency_ms::VARCHAR)), 3) AS p95,
               COUNT_IF(feature_json:outcome::VARCHAR <> 'ok') AS errors
        FROM recent
        WHERE activity = 'called_tool'
        GROUP BY who, tool
        QUALIFY ROW_NUMBER() OVER (PARTITION BY who ORDER BY n DESC, tool) <= 20
    )
    GROUP BY who
),
insights AS (
    SELECT
        customer_id AS who,
        ARRAY_AGG(OBJECT_CONSTRUCT_KEEP_NULL('subject', subject, 'metric', metric,
                                             'value', atom_value, 'ts', ts_text))
            WITHIN GROUP (ORDER BY ts DESC, subject, metric) AS insights
    FROM (
        SELECT customer_id, subject, metric, value AS atom_value, ts,
               TO_VARCHAR(ts, 'YYYY-MM-DD"T"HH24:MI:SS.FF3"Z"') AS ts_text
        FROM insight_atoms
        QUALIFY ROW_NUMBER() OVER (
            PARTITION BY customer_id, subject, metric ORDER BY ts DESC, atom_id DESC
        ) = 1
    )
    GROUP BY customer_id
)
SELECT
    t.who AS customer_id,
    OBJECT_CONSTRUCT_KEEP_NULL(
        'window_days', 30,
        'events', t.events,
        'sessions', t.sessions,
        'last_seen', t.last_seen,
        'top_activities', COALESCE(a.top, ARRAY_CONSTRUCT()),
        'tools', COALESCE(o.tools, ARRAY_CONSTRUCT()),
        'insights', COALESCE(i.insights, ARRAY_CONSTRUCT())
    ) AS context
FROM totals t
LEFT JOIN activities a ON a.who = t.who
LEFT JOIN tools o ON o.who = t.who
LEFT JOIN insights i ON i.who = t.who;

CREATE STREAM IF NOT EXISTS claude_stream_changes ON TABLE claude_stream APPEND_ONLY = TRUE;

CREATE OR REPLACE TASK activitybi_refresh_context_cache
    WAREHOUSE = activitybi_wh
    SCHEDULE = '5 MINUTE'
    COMMENT = 'activitybi: per-customer context summary into context_cache'
WHEN
    SYSTEM$STREAM_HAS_DATA('claude_stream_changes')
AS
MERGE INTO context_cache c
USING (
    SELECT customer_id, context
    FROM context_summary
    WHERE customer_id IN (
        SELECT DISTINCT COALESCE(customer, anonymous_customer_id) FROM claude_stream_changes
    )
) s
ON c.customer_id = s.customer_id
WHEN MATCHED THEN UPDATE SET
    context = s.context,
    updated_at = SYSDATE(),
    version = c.version + 1
WHEN NOT MATCHED THEN INSERT (customer_id, context, updated_at, version)
    VALUES (s.customer_id, s.context, SYSDATE(), 1);

-- CREATE OR REPLACE leaves a task suspended.
ALTER TASK activitybi_refresh_context_cache RESUME;
