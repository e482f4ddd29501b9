-- Transaction control for PostgreSQL.

-- name: begin_snapshot
-- Several statements that must see one consistent snapshot.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: ping
-- Health check.
SELECT 1 AS ok;
