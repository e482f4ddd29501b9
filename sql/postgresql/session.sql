-- Transaction control for PostgreSQL.

-- name: ping
-- Health check.
SELECT 1 AS ok;
