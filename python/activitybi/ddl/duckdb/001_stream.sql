-- The ActivitySchema v2.0 stream: the spec's columns exactly, then implementation
-- columns that start with '_'. ts is UTC without a time zone.
CREATE TABLE IF NOT EXISTS claude_stream (
    activity_id           VARCHAR PRIMARY KEY,
    ts                    TIMESTAMP NOT NULL,
    customer              VARCHAR,
    activity              VARCHAR NOT NULL,
    anonymous_customer_id VARCHAR,
    feature_json          JSON,
    revenue_impact        DOUBLE,
    link                  VARCHAR,
    _session_id           VARCHAR,
    _source               VARCHAR,
    _ingested_at          TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- activity_occurrence and activity_repeated_at, derived at query time so that late
-- arrivals never leave them stale.
CREATE OR REPLACE VIEW claude_stream_enriched AS
SELECT
    s.*,
    row_number() OVER w AS activity_occurrence,
    lead(ts) OVER w AS activity_repeated_at
FROM claude_stream s
WINDOW w AS (
    PARTITION BY activity, coalesce(customer, anonymous_customer_id)
    ORDER BY ts, activity_id
);

-- Where each queue's uploader has got to, written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS _activitybi_checkpoints (
    queue_id   VARCHAR PRIMARY KEY,
    checkpoint JSON NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
