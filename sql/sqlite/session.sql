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

-- name: pragma.write_cache
-- The process's one write connection keeps SQLite's default 2 MiB of pages, shared by every
-- thread's writes. Record ids start with the time, so inserts touch the right edges of the
-- indexes; 8 MiB (needed while ids were random) only raised a worker's peak by 3 MiB.
-- No memory-mapped I/O (mmap_size): measured no faster, and the mapped pages a worker
-- touches count in its RSS (docs/benchmarks.md, "Creates against the peer").
PRAGMA cache_size = -2048;

-- name: pragma.read_cache
-- A read connection per thread keeps 1 MiB of pages (the interior pages of the indexes a
-- request walks; random leaves would miss any cache). Pages missing here come from the
-- operating system's cache, which all connections and processes share. SQLite also sizes
-- a connection's in-memory sort by it: at SQLite's default 2 MiB, four threads grouping a
-- time series (which no longer sorts: docs/reports.md) took a worker from 38 to 62 MiB; at
-- 1 MiB to 52 MiB, at the same speed.
PRAGMA cache_size = -1024;

-- name: pragma.no_busy_wait
-- The writer handles a busy database itself (db.py: SQLiteDatabase.lock_attempts), with
-- short pauses instead of SQLite's busy-handler sleeps.
PRAGMA busy_timeout = 0;

-- name: pragma.temp_store
-- The write connection keeps statement journals in memory: a multi-row insert fires the
-- record_counts trigger, so SQLite keeps one, and on disk it costs a file write per page.
-- Read connections keep the default: a report's sort of every row spills to a file
-- instead of growing the worker's memory.
PRAGMA temp_store = MEMORY;

-- name: pragma.no_auto_checkpoint
-- No checkpoint inside a request's commit: db.py's Checkpointer thread does them.
PRAGMA wal_autocheckpoint = 0;

-- name: wal_checkpoint
-- Copy committed WAL pages into the database file without waiting for anyone. db.py's
-- Checkpointer runs it holding the writer gate: no write of ours may rewind the WAL
-- meanwhile (db.py: WriterGate).
PRAGMA wal_checkpoint(PASSIVE);

-- name: wal_restart
-- Copy the rest and rewind the WAL, waiting for readers of old snapshots through SQLite's
-- busy handler; run holding the writer gate, like wal_checkpoint.
PRAGMA wal_checkpoint(RESTART);

-- name: savepoint
-- One call's statements within a group commit (db.WriteGroup).
SAVEPOINT grouped_call;

-- name: rollback_to_savepoint
-- Undo one call of a group commit; the savepoint stays open until released.
ROLLBACK TO SAVEPOINT grouped_call;

-- name: release_savepoint
-- End one call of a group commit.
RELEASE SAVEPOINT grouped_call;
