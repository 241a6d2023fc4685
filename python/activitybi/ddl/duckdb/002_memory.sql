-- Memory: insight atoms, the per-customer context cache, rendered artifacts (PRD §7).
CREATE TABLE IF NOT EXISTS insight_atoms (
    atom_id               VARCHAR PRIMARY KEY,
    customer_id           VARCHAR NOT NULL,
    subject               VARCHAR NOT NULL,
    metric                VARCHAR NOT NULL,
    value                 JSON NOT NULL,
    provenance_query_hash VARCHAR,
    ts                    TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS context_cache (
    customer_id VARCHAR PRIMARY KEY,
    context     JSON NOT NULL,
    updated_at  TIMESTAMP NOT NULL,
    version     INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id  VARCHAR PRIMARY KEY,
    customer_id  VARCHAR NOT NULL,
    s3_url       VARCHAR NOT NULL,
    size_bytes   BIGINT NOT NULL,
    content_type VARCHAR,
    created_at   TIMESTAMP NOT NULL,
    expires_at   TIMESTAMP
);
