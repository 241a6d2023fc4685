-- query_tickets was never written: tickets are files in the home directory (every server
-- process reads them without the warehouse, which on DuckDB only the owner may open), and
-- query_audit already keeps one row per execution. Dropped where an older 003_queries.sql
-- created it (its row access policy goes with it).
DROP TABLE IF EXISTS query_tickets;
