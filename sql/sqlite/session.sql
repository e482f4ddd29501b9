-- Connection set-up and transaction control for SQLite.

-- name: pragma.journal_mode
-- Readers never block the writer, and the writer never blocks readers.
PRAGMA journal_mode = WAL;

-- name: pragma.synchronous
-- Durable at each checkpoint; safe with WAL against application crashes.
PRAGMA synchronous = NORMAL;

-- name: pragma.foreign_keys
-- Enforce record_events.record_id.
PRAGMA foreign_keys = ON;

-- name: begin_read
-- A read snapshot for several statements.
BEGIN;

-- name: begin_write
-- Take the write lock up front, so the busy timeout applies to waiting for it.
BEGIN IMMEDIATE;

-- name: ping
-- Health check.
SELECT 1 AS ok;

-- name: pragma.cache_size
-- 64 MiB of page cache per connection (the default is 2 MiB): random-uuid index inserts
-- touch pages all over the file, and a small cache turns them into reads and spills.
PRAGMA cache_size = -65536;

-- name: pragma.no_busy_wait
-- The writer connection handles a busy database itself (db.py: SQLiteDatabase.write),
-- with short pauses instead of SQLite's busy-handler sleeps.
PRAGMA busy_timeout = 0;
