-- Deduplication per customer (issue 16, mirrors ddl/duckdb/004_customer_key.sql): an
-- activity_id is unique per customer (or anonymous id), never across customers, and insight
-- atoms likewise. Snowflake never enforces these keys (the loader deduplicates, see
-- warehouse/snowflake.py); this makes the declared, informational keys say so. Rows are
-- kept. Each change is skipped when it was already made, so the file runs any number of times.
EXECUTE IMMEDIATE $$
DECLARE
    n INTEGER;
BEGIN
    SELECT COUNT(*) INTO :n FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS
    WHERE TABLE_SCHEMA = CURRENT_SCHEMA() AND TABLE_NAME = 'CLAUDE_STREAM'
      AND CONSTRAINT_TYPE = 'PRIMARY KEY';
    IF (n > 0) THEN
        ALTER TABLE claude_stream DROP PRIMARY KEY;
        ALTER TABLE claude_stream ADD CONSTRAINT claude_stream_customer_activity
            UNIQUE (customer, anonymous_customer_id, activity_id);
    END IF;

    SELECT COUNT(*) INTO :n FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS
    WHERE TABLE_SCHEMA = CURRENT_SCHEMA() AND TABLE_NAME = 'INSIGHT_ATOMS'
      AND CONSTRAINT_TYPE = 'PRIMARY KEY';
    IF (n > 0) THEN
        ALTER TABLE insight_atoms DROP PRIMARY KEY;
        ALTER TABLE insight_atoms ADD CONSTRAINT insight_atoms_customer_atom
            UNIQUE (customer_id, atom_id);
    END IF;
END;
$$;
