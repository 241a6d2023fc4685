-- Memory: insight atoms, the per-customer context cache, rendered artifacts (PRD §7).
-- Mirrors ddl/duckdb/002_memory.sql. PRIMARY KEYs are informational on Snowflake.
CREATE TABLE IF NOT EXISTS insight_atoms (
    atom_id               VARCHAR NOT NULL,
    customer_id           VARCHAR NOT NULL,
    subject               VARCHAR NOT NULL,
    metric                VARCHAR NOT NULL,
    value                 VARIANT NOT NULL,
    provenance_query_hash VARCHAR,
    ts                    TIMESTAMP_NTZ NOT NULL,
    CONSTRAINT insight_atoms_customer_atom UNIQUE (customer_id, atom_id)
)
CLUSTER BY (subject, metric, ts);

ALTER TABLE insight_atoms CLUSTER BY (subject, metric, ts);

-- Refreshed every 5 minutes by the task in 004_governance.sql.
CREATE TABLE IF NOT EXISTS context_cache (
    customer_id VARCHAR NOT NULL PRIMARY KEY,
    context     VARIANT NOT NULL,
    updated_at  TIMESTAMP_NTZ NOT NULL,
    version     INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id  VARCHAR NOT NULL PRIMARY KEY,
    customer_id  VARCHAR NOT NULL,
    s3_url       VARCHAR NOT NULL,
    size_bytes   BIGINT NOT NULL,
    content_type VARCHAR,
    created_at   TIMESTAMP_NTZ NOT NULL,
    expires_at   TIMESTAMP_NTZ
);
