-- The audit log of every SafeSQL execution (the tickets themselves are files under
-- the home directory's tickets/ folder, readable by every server process).
-- Mirrors ddl/duckdb/003_queries.sql.
CREATE TABLE IF NOT EXISTS query_audit (
    ticket_id   VARCHAR NOT NULL,
    customer_id VARCHAR NOT NULL,
    template    VARCHAR NOT NULL,
    params_hash VARCHAR NOT NULL,
    query_tag   VARCHAR NOT NULL,
    row_count   BIGINT,
    bytes       BIGINT,
    duration_ms FLOAT,
    outcome     VARCHAR NOT NULL,
    executed_at TIMESTAMP_NTZ NOT NULL
);
