-- Bookkeeping of applied migrations (SQLite).

-- name: migrations.begin
-- Nothing to do: the step's transaction began with BEGIN IMMEDIATE, which
-- already holds SQLite's write lock and so serialises migrators.
SELECT 1;

-- name: migrations.create_table
-- The record of applied migrations.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
);

-- name: migrations.applied
-- Applied migrations, oldest first.
SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version;

-- name: migrations.record
-- Mark one migration applied.
INSERT INTO schema_migrations (version, name, checksum, applied_at)
VALUES (:version, :name, :checksum, :applied_at);

-- name: migrations.forget
-- Mark one migration rolled back.
DELETE FROM schema_migrations WHERE version = :version;
