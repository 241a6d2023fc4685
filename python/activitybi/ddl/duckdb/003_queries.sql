-- The audit log of every SafeSQL execution (the tickets themselves are files under
-- $ACTIVITYBI_HOME/tickets, readable by every server process).
CREATE TABLE IF NOT EXISTS query_audit (
    ticket_id   VARCHAR NOT NULL,
    customer_id VARCHAR NOT NULL,
    template    VARCHAR NOT NULL,
    params_hash VARCHAR NOT NULL,
    query_tag   VARCHAR NOT NULL,
    row_count   BIGINT,
    bytes       BIGINT,
    duration_ms DOUBLE,
    outcome     VARCHAR NOT NULL,
    executed_at TIMESTAMP NOT NULL
);
