-- The ActivitySchema v2.0 stream on Snowflake (mirrors ddl/duckdb/001_stream.sql): the
-- spec's columns exactly, then implementation columns that start with '_'. JSON is VARIANT;
-- ts is TIMESTAMP_NTZ holding UTC (the loader writes UTC, SYSDATE() is UTC).
-- The key is informational on Snowflake (never enforced): the loader deduplicates, per
-- customer (006_customer_key.sql moves a table of an older version to this key).
CREATE TABLE IF NOT EXISTS claude_stream (
    activity_id           VARCHAR NOT NULL,
    ts                    TIMESTAMP_NTZ NOT NULL,
    customer              VARCHAR,
    activity              VARCHAR NOT NULL,
    anonymous_customer_id VARCHAR,
    feature_json          VARIANT,
    revenue_impact        FLOAT,
    link                  VARCHAR,
    _session_id           VARCHAR,
    _source               VARCHAR,
    _ingested_at          TIMESTAMP_NTZ NOT NULL DEFAULT SYSDATE(),
    CONSTRAINT claude_stream_customer_activity UNIQUE (customer, anonymous_customer_id, activity_id)
)
CLUSTER BY (activity, ts);

-- CREATE TABLE IF NOT EXISTS leaves an existing table alone: keep its clustering key right.
ALTER TABLE claude_stream CLUSTER BY (activity, ts);

-- activity_occurrence and activity_repeated_at, derived at query time (ordered by ts, then
-- activity_id to break ties) so that late arrivals never leave them stale.
-- (Snowflake has no named WINDOW clause, so the window is spelled out twice.)
CREATE OR REPLACE VIEW claude_stream_enriched AS
SELECT
    s.*,
    ROW_NUMBER() OVER (
        PARTITION BY s.activity, COALESCE(s.customer, s.anonymous_customer_id)
        ORDER BY s.ts, s.activity_id
    ) AS activity_occurrence,
    LEAD(s.ts) OVER (
        PARTITION BY s.activity, COALESCE(s.customer, s.anonymous_customer_id)
        ORDER BY s.ts, s.activity_id
    ) AS activity_repeated_at
FROM claude_stream s;

-- Where each queue's uploader has got to, written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS _activitybi_checkpoints (
    queue_id   VARCHAR NOT NULL PRIMARY KEY,
    checkpoint VARIANT NOT NULL,
    updated_at TIMESTAMP_NTZ NOT NULL
);

-- Landing table for PUT + COPY INTO: one VARIANT per NDJSON line. Every line carries its
-- queue (_q), batch (_b), kind (k: 's' stream row, 'a' insight atom) and write time (_at,
-- epoch seconds); the load's transaction moves a batch into the tables above and deletes it.
-- Its table stage (@%_activitybi_landing) holds the files, one folder per batch.
CREATE TABLE IF NOT EXISTS _activitybi_landing (
    v VARIANT
);
