"""Database access: connection reuse, recovery, and the SQLite settings."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import hold_writer_gate, make_settings, new_pg_schema
from webtest import TestApp

from workflow import create_app
from workflow_service.db import Checkpointer
from workflow_service.migrations import Migrator


@pytest.fixture
def pg_app(pg_server_url):
    """An app on a fresh, migrated PostgreSQL schema."""
    url = new_pg_schema(pg_server_url)
    wsgi = create_app(make_settings(url))
    Migrator(wsgi.db).up()
    yield TestApp(wsgi), url
    wsgi.db.close()


def test_sqlite_connection_settings(tmp_path):
    wsgi = create_app(make_settings(f"sqlite:///{tmp_path / 'x.db'}", DB_TIMEOUT_SECONDS="3"))
    conn = wsgi.db._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 3000
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 0  # reports' sorts may spill to a file
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # the Checkpointer's job
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -1024  # also bounds a report's in-memory sort
    assert wsgi.db._connection() is conn  # reused, not reopened
    with wsgi.db.write():
        writer = wsgi.db._connection("write")
        assert writer.execute("PRAGMA temp_store").fetchone()[0] == 2  # statement journals in memory
        assert writer.execute("PRAGMA cache_size").fetchone()[0] == -2048
    wsgi.db.close()


def test_sqlite_opens_nothing_on_a_file_it_cannot_write(tmp_path, monkeypatch):
    """SQLite would open such a file read-only, and every later connection of the process, the
    writer's too, would share that read-only state after the file became writable again (a
    read-only mount remounted): so no connection is opened until the file is writable."""
    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}"))
    Migrator(wsgi.db).up()
    wsgi.db.close()
    app = TestApp(wsgi)
    real_access = os.access
    writable = False
    monkeypatch.setattr(os, "access", lambda p, mode: writable and real_access(p, mode))
    body = {"source": "s", "category": "c", "payload": {}}
    assert app.post_json("/records", body, status=503).json["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert app.get("/records", status=503).json["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert wsgi.db._writer is None and getattr(wsgi.db._local, "read", None) is None
    writable = True
    assert app.post_json("/records", body, status=201).json["status"] == "pending"
    assert app.get("/records").json["total"] == 1
    wsgi.db.close()


def test_sqlite_checkpoints_outside_the_request(tmp_path):
    """Writes leave pages in the WAL; the checkpointer thread, not the request, moves them into the file."""
    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}"))
    Migrator(wsgi.db).up()
    app = TestApp(wsgi)
    checkpointer = wsgi.db._checkpointer
    assert checkpointer is not None and checkpointer.done.wait(10)  # the migration's pages are in the file
    size_before = path.stat().st_size
    records = [{"source": "s", "category": "c", "payload": {"text": "x" * 500}} for _ in range(1000)]
    app.post_json("/records/batch", {"records": records}, status=201)
    assert wsgi.db._checkpointer is checkpointer  # one per process
    assert checkpointer.done.wait(10)
    assert path.stat().st_size > size_before + 500 * 1000  # the records reached the database file
    assert app.get("/records?limit=1").json["total"] == 1000

    worker_thread = threading.Thread(target=wsgi.db.release_thread)  # a queue worker thread ending
    worker_thread.start()
    worker_thread.join()
    assert wsgi.db._checkpointer is checkpointer and wsgi.db._writer is not None  # the process's stay

    wsgi.db.close()  # stops the thread after a last checkpoint
    assert wsgi.db._checkpointer is None
    app.post_json("/records", records[0], status=201)  # the next write starts another
    assert wsgi.db._checkpointer not in (None, checkpointer)
    wsgi.db.close()


def test_sqlite_writer_polls_another_processs_lock_quickly_then_backs_off(tmp_path, monkeypatch):
    """A commit of another process holds the lock for 0.3-2 ms: the waiter polls every 50 µs (jittered)
    for the first 5 ms, so that the lock is not left free long after it is released; then it backs
    off to pauses of at most 2 ms, and takes the lock once it is free."""

    from workflow_service import db as db_module

    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}"))
    Migrator(wsgi.db).up()
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer, as SQLite sees it
    other.execute("BEGIN IMMEDIATE")
    pauses, first_miss, long_wait = [], [], threading.Event()
    real_monotonic, real_sleep = time.monotonic, time.sleep

    class Clock:  # the db module's view of `time`: the writer's pauses are recorded, and really slept
        monotonic = staticmethod(real_monotonic)

        @staticmethod
        def sleep(seconds):
            if threading.current_thread() is writer:  # not the checkpointer's pauses
                now = real_monotonic()
                first_miss[:] = first_miss or [now]
                pauses.append((now - first_miss[0], seconds))  # (seconds since the first miss, pause)
                if now - first_miss[0] > 0.05:
                    long_wait.set()
            real_sleep(seconds)

    outcome = []

    def write():
        with wsgi.db.write() as s:
            outcome.append(s.one("ping", {})["ok"])

    writer = threading.Thread(target=write)
    monkeypatch.setattr(db_module, "time", Clock)
    writer.start()
    assert long_wait.wait(10)
    other.commit()  # the lock is free: the waiter takes it at its next attempt
    writer.join(10)
    assert outcome == [1]
    early = [p for at, p in pauses if at < db_module.SQLiteDatabase.RETRY_FAST_SECONDS]
    late = [p for at, p in pauses if at > 0.01]
    assert len(early) > 10 and max(early) <= 1.5 * db_module.SQLiteDatabase.RETRY_PAUSE_SECONDS
    assert late and max(late) > 4 * db_module.SQLiteDatabase.RETRY_PAUSE_SECONDS  # it backed off
    assert max(p for _, p in pauses) <= 1.5 * db_module.SQLiteDatabase.RETRY_MAX_PAUSE_SECONDS
    other.close()
    wsgi.db.close()


def test_sqlite_writes_wait_for_the_writer_gate(tmp_path):
    """While another process writes or checkpoints, a write waits for it, up to DB_TIMEOUT_SECONDS."""
    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}", DB_TIMEOUT_SECONDS="0.5"))
    Migrator(wsgi.db).up()
    app = TestApp(wsgi)
    record = {"source": "s", "category": "c", "payload": {}}
    fd = hold_writer_gate(path)
    try:
        app.post_json("/records", record, status=503)
    finally:
        os.close(fd)
    app.post_json("/records", record, status=201)
    assert app.get("/records").json["total"] == 1  # the refused create stored nothing
    wsgi.db.close()


def _checkpointer_beside_another_writer(tmp_path) -> tuple[Path, Checkpointer, sqlite3.Connection]:
    """A migrated file, a Checkpointer of our own on it and another program's connection that leaves
    its writes in the WAL (no automatic checkpoint); the caller stops the one and closes the other."""
    from workflow_service.db import WriterGate

    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}"))
    Migrator(wsgi.db).up()
    queries = wsgi.db.queries
    wsgi.db.close()  # its checkpointer copies the migrations' pages and stops
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA wal_autocheckpoint = 0")
    other.execute("CREATE TABLE filler (x)")
    return path, Checkpointer(str(path), queries, threading.Lock(), WriterGate(f"{path}-writer.lock")), other


def test_sqlite_checkpoints_wait_for_the_writer_gate(tmp_path):
    """No checkpoint runs while a write of ours may rewind the WAL (SQLite's WAL-reset bug, db.WriterGate)."""
    path, checkpointer, other = _checkpointer_beside_another_writer(tmp_path)
    other.execute("INSERT INTO filler SELECT randomblob(4000) FROM json_each(?)", [str(list(range(500)))])
    size = path.stat().st_size
    fd = hold_writer_gate(path)
    try:
        assert checkpointer.checkpoint() is False  # it gave up after GATE_WAIT_SECONDS
        assert path.stat().st_size == size
    finally:
        os.close(fd)
    assert checkpointer.checkpoint() is True
    assert path.stat().st_size > size + 500 * 4000
    checkpointer.stop()
    assert checkpointer.stopped.wait(10)
    other.close()


def test_sqlite_checkpointer_syncs_the_wal_before_it_takes_the_writer_gate(tmp_path, monkeypatch):
    """The WAL's frames go to disk while writers still write; the checkpoint's own sync, with every
    writer held off, then finds little left."""
    path, checkpointer, other = _checkpointer_beside_another_writer(tmp_path)
    synced = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fdatasync(fd))
    fd = hold_writer_gate(path)
    try:
        assert checkpointer.checkpoint() is False  # the gate stayed taken: no checkpoint...
    finally:
        os.close(fd)
    assert synced == [f"{path}-wal"]  # ...but the WAL was synced before the wait
    checkpointer.stop()
    assert checkpointer.stopped.wait(10)
    other.close()


def test_postgresql_connections_are_reused(pg_app):
    app, _ = pg_app
    app.get("/records")
    with app.app.db.read() as s:
        first = s.one_sql("SELECT pg_backend_pid() AS pid")["pid"]
    for _ in range(5):
        app.get("/records")
    with app.app.db.read() as s:
        assert s.one_sql("SELECT pg_backend_pid() AS pid")["pid"] == first


def test_postgresql_snapshot_reads_are_repeatable_read_and_read_only_and_writes_are_not(pg_app):
    app, _ = pg_app
    db = app.app.db
    settings = "SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro"
    for _ in range(2):  # the same pooled connection, back and forth
        with db.read(snapshot=True) as s:
            assert s.one_sql(settings) == {"iso": "repeatable read", "ro": "on"}
        with db.write() as s:
            assert s.one_sql(settings) == {"iso": "read committed", "ro": "off"}
        with db.read() as s:
            assert s.one_sql(settings) == {"iso": "read committed", "ro": "off"}


def test_postgresql_recovers_when_its_connections_are_killed(pg_app):
    app, database_url = pg_app
    assert app.get("/health").status_int == 200
    admin = create_app(make_settings(database_url))
    with admin.db.read() as s:
        killed = s.all_sql("SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity "
                  "WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename = current_user "
                  "AND application_name = ''")
    admin.db.close()
    assert any(row["killed"] for row in killed)
    statuses = [app.get("/records", expect_errors=True).status_int for _ in range(3)]
    # The request that meets the dead connection may get a 503; the pool then reconnects by itself.
    assert statuses[-2:] == [200, 200] and statuses[0] in (200, 503)
    assert app.get("/health").json["status"] == "healthy"


WRITER_SCRIPT = """
import sys, threading
from webtest import TestApp
from conftest import make_settings
from workflow import create_app
app = TestApp(create_app(make_settings("sqlite:///" + sys.argv[1])))
records = [{"source": "s", "category": f"c{i % 7}", "payload": {"n": i}} for i in range(100)]
def write():
    for _ in range(int(sys.argv[2])):
        app.post_json("/records/batch", {"records": records}, status=201)
threads = [threading.Thread(target=write) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


def wal_rewinds(wal: Path) -> int:
    """How many times the WAL was rewound since it was created: its header's checkpoint sequence number.

    A writer that finds every frame copied into the database, and no reader on them, starts the WAL
    over from its top and counts it there (sqlite.org/fileformat2.html, "WAL File Format").
    """
    return struct.unpack(">I", wal.read_bytes()[12:16])[0]


def test_sqlite_wal_is_rewound_while_two_processes_write(tmp_path):
    """Each process's checkpointer must get its checkpoints in between the other process's writers.

    With SQLite's busy handler (sleeps of 1, 2, 5, 10 ms) its RESTART lost to writers that retry
    every 50 µs, and the WAL grew to 70-100 MiB here. The WAL's largest size is no measure of that
    on a fast machine: the ~50 MB these writers add take about two checkpoint intervals there.
    So the test counts rewinds: 6 and 8 in two runs (2026-11-27), each process checkpointing about
    every 0.3 s.
    """
    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}"))
    Migrator(wsgi.db).up()
    wsgi.db.close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parent.parent)]))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path), "150"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    for proc in writers:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-2000:]
    assert wal_rewinds(tmp_path / "x.db-wal") >= 3
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check.close()


def test_sqlite_wal_stays_bounded_under_steady_writes(tmp_path):
    """PASSIVE checkpoints alone never catch up with writes that do not stop; the WAL must still rewind."""
    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}"))
    Migrator(wsgi.db).up()
    app = TestApp(wsgi)
    records = [{"source": "s", "category": f"c{i % 7}", "payload": {"n": i}} for i in range(500)]
    for _ in range(150):  # ~130 MiB of WAL if it were never rewound (measured: 89 MiB after 100)
        app.post_json("/records/batch", {"records": records}, status=201)
    wal_bytes = (tmp_path / "x.db-wal").stat().st_size  # the file keeps its largest size
    assert wal_bytes < 3 * Checkpointer.RESTART_FRAMES * 4096  # 48 MiB; ~25 MiB measured with rewinds
    assert app.get("/records?limit=1").json["total"] == 75_000
    wsgi.db.close()


def test_sqlite_restart_backs_off_while_a_reader_holds_an_old_snapshot(tmp_path):
    """A long reader (a CSV export) keeps RESTART from finishing; writers must not wait for it every cycle."""

    path = tmp_path / "x.db"
    wsgi = create_app(make_settings(f"sqlite:///{path}"))
    Migrator(wsgi.db).up()
    app = TestApp(wsgi)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM records").fetchone()  # holds its snapshot until rollback
    records = [{"source": "s", "category": f"c{i % 7}", "payload": {"n": i}} for i in range(500)]
    checkpointer = None
    for _ in range(200):  # bounded: each batch adds ~230 WAL frames and wakes the checkpointer
        app.post_json("/records/batch", {"records": records}, status=201)
        checkpointer = wsgi.db._checkpointer
        if checkpointer._restart_after > time.monotonic():
            break
    assert checkpointer._restart_after > time.monotonic(), "RESTART never gave up on the old snapshot"
    reader.rollback()
    reader.close()
    wsgi.db.close()
