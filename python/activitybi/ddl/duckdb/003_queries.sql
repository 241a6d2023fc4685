-- SafeSQL query tickets and the audit log of every execution.
CREATE TABLE IF NOT EXISTS query_tickets (
    ticket_id    VARCHAR PRIMARY KEY,
    customer_id  VARCHAR NOT NULL,
    template     VARCHAR NOT NULL,
    params       JSON NOT NULL,
    params_hash  VARCHAR NOT NULL,
    byte_cap     BIGINT NOT NULL,
    status       VARCHAR NOT NULL,
    progress     DOUBLE,
    error        VARCHAR,
    result       JSON,
    submitted_at TIMESTAMP NOT NULL,
    started_at   TIMESTAMP,
    finished_at  TIMESTAMP
);

CREATE TABLE IF NOT EXISTS query_audit (
    ticket_id   VARCHAR NOT NULL,
    customer_id VARCHAR NOT NULL,
    template    VARCHAR NOT NULL,
    params_hash VARCHAR NOT NULL,
    query_tag   VARCHAR NOT NULL,
    rows        BIGINT,
    bytes       BIGINT,
    duration_ms DOUBLE,
    outcome     VARCHAR NOT NULL,
    executed_at TIMESTAMP NOT NULL
);
