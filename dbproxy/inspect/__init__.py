"""Side connection (asyncpg): generic plans, sampled EXPLAIN ANALYZE, pg_stat_statements."""
