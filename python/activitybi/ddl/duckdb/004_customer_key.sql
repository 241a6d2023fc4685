-- only if: SELECT count(*) > 0 FROM duckdb_constraints() WHERE table_name = 'claude_stream' AND constraint_type = 'PRIMARY KEY' AND constraint_column_names = ['activity_id']
-- Deduplication per customer (issue 16): an activity_id is unique per customer (or
-- anonymous id), never across customers, so one customer's id never hides, replaces or
-- reveals another's event; insight atoms likewise per customer. DuckDB cannot drop a
-- primary key, so the two tables are rebuilt, rows kept, in one transaction; the first
-- line makes this run only on a table that still has the old key.
BEGIN TRANSACTION;

CREATE TABLE _claude_stream_004 (
    activity_id           VARCHAR NOT NULL,
    ts                    TIMESTAMP NOT NULL,
    customer              VARCHAR,
    activity              VARCHAR NOT NULL,
    anonymous_customer_id VARCHAR,
    feature_json          JSON,
    revenue_impact        DOUBLE,
    link                  VARCHAR,
    _session_id           VARCHAR,
    _source               VARCHAR,
    _ingested_at          TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    -- coalesce(customer, anonymous_customer_id, ''), written by the loader: the owner of the id.
    _customer_key         VARCHAR NOT NULL,
    PRIMARY KEY (_customer_key, activity_id)
);
INSERT INTO _claude_stream_004
SELECT activity_id, ts, customer, activity, anonymous_customer_id, feature_json, revenue_impact,
       link, _session_id, _source, _ingested_at, coalesce(customer, anonymous_customer_id, '')
FROM claude_stream;
DROP TABLE claude_stream;
ALTER TABLE _claude_stream_004 RENAME TO claude_stream;

CREATE TABLE _insight_atoms_004 (
    atom_id               VARCHAR NOT NULL,
    customer_id           VARCHAR NOT NULL,
    subject               VARCHAR NOT NULL,
    metric                VARCHAR NOT NULL,
    value                 JSON NOT NULL,
    provenance_query_hash VARCHAR,
    ts                    TIMESTAMP NOT NULL,
    PRIMARY KEY (customer_id, atom_id)
);
INSERT INTO _insight_atoms_004 SELECT * FROM insight_atoms;
DROP TABLE insight_atoms;
ALTER TABLE _insight_atoms_004 RENAME TO insight_atoms;

COMMIT;
