-- PostgreSQL counts updates once per statement from this version on (see its 0009), so
-- that a worker's batch rewrites each counter row once. SQLite has no statement-level
-- triggers, and its counter rows are changed in place (no row versions to prune): nothing
-- to do. The version exists on both so that both databases share one history.

-- migrate:up
SELECT 1;

-- migrate:down
SELECT 1;
