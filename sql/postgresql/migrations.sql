-- Bookkeeping of applied migrations (PostgreSQL).

-- name: migrations.begin
-- Serialise migrators across processes and hosts until this transaction ends.
SELECT pg_advisory_xact_lock(7220240001);

-- name: migrations.create_table
-- The record of applied migrations.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL
);

-- name: migrations.applied
-- Applied migrations, oldest first.
SELECT version, name, checksum,
       to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS applied_at
FROM schema_migrations ORDER BY version;

-- name: migrations.record
-- Mark one migration applied.
INSERT INTO schema_migrations (version, name, checksum, applied_at)
VALUES (%(version)s, %(name)s, %(checksum)s, %(applied_at)s);

-- name: migrations.forget
-- Mark one migration rolled back.
DELETE FROM schema_migrations WHERE version = %(version)s;
