-- SafeSQL query tickets and the audit log of every execution.
-- Mirrors ddl/duckdb/003_queries.sql. PRIMARY KEYs are informational on Snowflake.
CREATE TABLE IF NOT EXISTS query_tickets (
    ticket_id    VARCHAR NOT NULL PRIMARY KEY,
    customer_id  VARCHAR NOT NULL,
    template     VARCHAR NOT NULL,
    params       VARIANT NOT NULL,
    params_hash  VARCHAR NOT NULL,
    byte_cap     BIGINT NOT NULL,
    status       VARCHAR NOT NULL,
    progress     FLOAT,
    error        VARCHAR,
    result       VARIANT,
    submitted_at TIMESTAMP_NTZ NOT NULL,
    started_at   TIMESTAMP_NTZ,
    finished_at  TIMESTAMP_NTZ
);

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
