"""Atomic transitions and the worker against real processes, on SQLite and PostgreSQL.

- 20 concurrent `process` calls through a gunicorn server with 4 workers.
- Several worker processes draining 5,000 records.
- A worker killed with SIGKILL in the middle of a batch, then restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import audit_mismatches, empty_database_url, make_settings, new_pg_schema
from serverutil import ROOT, json_lines, request, service_env, start_server, stop_server
from webtest import TestApp

from workflow import create_app
from workflow_service.db import open_database
from workflow_service.migrations import Migrator

pytestmark = pytest.mark.server

PROCESSORS = "tests.procs:COUNTING"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path_factory):
    """A fresh, migrated database for one test."""
    url = empty_database_url(request.param, request, tmp_path_factory)
    app = create_app(make_settings(url))
    Migrator(app.db).up()
    app.db.close()
    return url


@pytest.fixture
def inspect(fresh_url):
    """An in-process app on the same database, for seeding and checking."""
    wsgi = create_app(make_settings(fresh_url))
    yield TestApp(wsgi)
    wsgi.db.close()


def terminal_events(inspect) -> Counter:
    """How many terminal events each record has."""
    with inspect.app.db.read() as s:
        rows = s.all_sql("SELECT record_id, to_status FROM record_events "
                         "WHERE to_status IN ('processed', 'failed')")
    return Counter(str(r["record_id"]) for r in rows)


def status_counts(inspect) -> dict:
    return inspect.get("/reports/summary").json["totals"]


def seed(inspect, n: int, category: str = "counted") -> list[str]:
    ids = []
    for start in range(0, n, 1000):
        records = [{"source": "load", "category": category, "payload": {"i": i}}
                   for i in range(start, min(n, start + 1000))]
        ids += [r["id"] for r in inspect.post_json("/records/batch", {"records": records}).json["items"]]
    return ids


def counted(path: Path) -> Counter:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_twenty_concurrent_process_calls_have_one_winner(fresh_url, inspect, tmp_path):
    count_file = tmp_path / "calls.txt"
    server = start_server(fresh_url, tmp_path / "logs", workers=4, WORKFLOW_PROCESSORS=PROCESSORS,
                          WORKFLOW_TEST_COUNT_FILE=str(count_file))
    try:
        rid = seed(inspect, 1)[0]
        barrier = threading.Barrier(20)
        results = []

        def call():
            barrier.wait(timeout=20)
            status, _, body = request("POST", f"{server.base_url}/records/{rid}/process", timeout=30)
            results.append((status, body))

        threads = [threading.Thread(target=call) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        statuses = Counter(status for status, _ in results)
        assert statuses == {200: 1, 409: 19}, (statuses, server.describe())
    finally:
        stop_server(server)
    assert counted(count_file) == {rid: 1}
    assert terminal_events(inspect) == {rid: 1}
    assert audit_mismatches(inspect.app.db) == []
    assert inspect.get(f"/records/{rid}").json["status"] == "processed"


def worker_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "workflow", "worker", "--processors", PROCESSORS, *extra]


def start_worker(url: str, tmp_path: Path, name: str, *extra: str, **env: str) -> subprocess.Popen:
    out = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(worker_command(*extra), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, env=service_env(DATABASE_URL=url, **env))
    out.close()
    return proc


def test_worker_processes_drain_5000_records_exactly_once(fresh_url, inspect, tmp_path):
    workers = 3 if fresh_url.startswith("postgresql") else 2
    count_file = tmp_path / "calls.txt"
    ids = seed(inspect, 5000)
    procs = [start_worker(fresh_url, tmp_path, f"w{i}", "--once", "--batch-size", "50",
                          WORKFLOW_TEST_COUNT_FILE=str(count_file)) for i in range(workers)]
    for i, proc in enumerate(procs):
        try:
            assert proc.wait(timeout=600) == 0, (tmp_path / f"w{i}.out").read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    calls = counted(count_file)
    assert sum(calls.values()) == 5000 and set(calls) == set(ids) and max(calls.values()) == 1
    assert terminal_events(inspect) == dict.fromkeys(ids, 1)
    assert status_counts(inspect) == {"all": 5000, "pending": 0, "processed": 5000, "failed": 0}
    batches = [line for i in range(workers) for line in json_lines((tmp_path / f"w{i}.out").read_text())
               if line.get("event") == "worker.batch"]
    assert sum(b["claimed"] for b in batches) == 5000
    assert audit_mismatches(inspect.app.db) == []
    assert all({"claimed", "processed", "failed", "duration_ms"} <= set(b) for b in batches)
    if fresh_url.startswith("postgresql"):  # each `--once` folds the counts' shards after its drain
        with inspect.app.db.read() as s:
            assert s.all_sql("SELECT DISTINCT shard FROM record_counts") == [{"shard": 0}]


def test_worker_killed_mid_batch_loses_and_repeats_nothing(fresh_url, inspect, tmp_path):
    count_file = tmp_path / "calls.txt"
    block_dir = tmp_path / "block"
    block_dir.mkdir()
    ids = seed(inspect, 300)
    victim = start_worker(fresh_url, tmp_path, "victim", "--batch-size", "50",
                          WORKFLOW_TEST_COUNT_FILE=str(count_file), WORKFLOW_TEST_BLOCK_DIR=str(block_dir),
                          WORKFLOW_TEST_BLOCK_AFTER="120")
    try:
        deadline = time.monotonic() + 60
        while not (block_dir / "blocked").exists():
            assert victim.poll() is None, (tmp_path / "victim.out").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker never reached the blocking record"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    # Batches 1 and 2 committed; the third, 20 records in when it was killed, did not.
    assert status_counts(inspect) == {"all": 300, "pending": 200, "processed": 100, "failed": 0}

    (block_dir / "release").write_text("go")
    again = start_worker(fresh_url, tmp_path, "again", "--once", "--batch-size", "50",
                         WORKFLOW_TEST_COUNT_FILE=str(count_file))
    assert again.wait(timeout=300) == 0, (tmp_path / "again.out").read_text()[-2000:]
    assert status_counts(inspect) == {"all": 300, "pending": 0, "processed": 300, "failed": 0}
    assert terminal_events(inspect) == dict.fromkeys(ids, 1)
    assert audit_mismatches(inspect.app.db) == []
    for rid in ids[::37]:
        trail = inspect.get(f"/records/{rid}/events").json["items"]
        assert [(e["from_status"], e["to_status"]) for e in trail] == [(None, "pending"), ("pending", "processed")]


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(fresh_url, inspect, tmp_path):
    count_file = tmp_path / "calls.txt"
    block_dir = tmp_path / "block"
    block_dir.mkdir()
    seed(inspect, 100)
    proc = start_worker(fresh_url, tmp_path, "term", "--batch-size", "50",
                        WORKFLOW_TEST_COUNT_FILE=str(count_file), WORKFLOW_TEST_BLOCK_DIR=str(block_dir),
                        WORKFLOW_TEST_BLOCK_AFTER="10")
    try:
        deadline = time.monotonic() + 60
        while not (block_dir / "blocked").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        (block_dir / "release").write_text("go")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    totals = status_counts(inspect)
    assert totals["processed"] == 50 and totals["pending"] == 50  # the batch in hand, nothing more
    assert sum(counted(count_file).values()) == 50


def test_postgresql_count_shards_cannot_deadlock(pg_server_url):
    """Two transactions on one counter shard change counts in opposite orders; both commit.

    Before migration 0007 the second transaction to close the cycle failed with
    DeadlockDetected (a 503 seen in the benchmark on concurrent batches).
    """
    import psycopg

    url = new_pg_schema(pg_server_url)
    db = open_database(make_settings(url))
    Migrator(db).up()
    db.close()
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    conns = []
    by_shard: dict[int, psycopg.Connection] = {}
    first = second = None
    for _ in range(17):  # 17 connections: two of them share a pid mod 16
        conn = psycopg.connect(conninfo, autocommit=True)
        conns.append(conn)
        shard = conn.info.backend_pid % 16
        if shard in by_shard:
            first, second = by_shard[shard], conn
            break
        by_shard[shard] = conn
    watcher = psycopg.connect(conninfo, autocommit=True)
    conns.append(watcher)
    try:
        ids = {}
        for name, category in (("x", "c1"), ("y", "c2"), ("z", "c2"), ("w", "c1")):
            ids[name] = str(uuid.uuid4())
            first.execute(
                "INSERT INTO records (id, source, category, payload, status, attempts, created_at, updated_at,"
                " available_at) VALUES (%s, 's', %s, '{}', 'pending', 0, now(), now(), now())", (ids[name], category))
        done = "UPDATE records SET status = 'processed' WHERE id = %s"
        errors = []

        def other():
            try:
                with second.transaction():
                    second.execute(done, (ids["y"],))  # c2 counts, then c1: the opposite order
                    second.execute(done, (ids["w"],))
            except psycopg.Error as exc:
                errors.append(exc)

        with first.transaction():
            first.execute(done, (ids["x"],))  # c1 counts
            thread = threading.Thread(target=other)
            thread.start()
            deadline = time.monotonic() + 10
            # Asked from a connection of its own: inside a transaction, pg_stat_activity is a snapshot.
            while watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                  (second.info.backend_pid,)).fetchone()[0] != "Lock":
                assert time.monotonic() < deadline, "the other transaction never waited for a lock"
            first.execute(done, (ids["z"],))  # c2 counts: without the shard lock, a cycle
        thread.join(timeout=30)
        assert not thread.is_alive() and errors == []
        totals = dict(first.execute("SELECT status, sum(n) FROM record_counts GROUP BY status").fetchall())
        assert totals == {"pending": 0, "processed": 4}
    finally:
        for conn in conns:
            conn.close()


def test_postgresql_folding_the_counts_while_others_write_keeps_them_exact(pg_server_url):
    """Creates and state changes on four connections while the counts are folded again and
    again: nothing deadlocks or fails, and the counts end equal to a full count."""
    from workflow_service.reports import fold_counts

    url = new_pg_schema(pg_server_url)
    settings = make_settings(url)
    db = open_database(settings)
    Migrator(db).up()
    writers = [TestApp(create_app(settings, db=open_database(settings))) for _ in range(4)]
    errors, folds = [], []

    def write(app, n):
        try:
            for round_ in range(15):
                batch = {"records": [{"source": f"s{i % 3}", "category": f"c{(n + round_) % 4}",
                                      "payload": {"priority": i}} for i in range(8)]}
                created = app.post_json("/records/batch", batch).json["items"]
                for record in created[::2]:
                    app.post(f"/records/{record['id']}/process")
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(app, n)) for n, app in enumerate(writers)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in threads) and len(folds) < 500 and time.monotonic() < deadline:
            folds.append(fold_counts(db))
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads) and errors == []
        assert len([n for n in folds if n]) > 1 and audit_mismatches(db) == [], folds
        fold_counts(db)
        with db.read() as s:
            assert s.one_sql("SELECT count(*) AS rows, max(shard) AS shard, min(n) > 0 AS positive "
                             "FROM record_counts") == {
                "rows": len(s.all_sql("SELECT DISTINCT category, source, status FROM records")), "shard": 0,
                "positive": True}
        assert audit_mismatches(db) == []
    finally:
        for app in writers:
            app.app.db.close()
        db.close()


def test_postgresql_a_fold_waits_for_the_shard_locks_not_for_counter_rows(pg_server_url):
    """The fold takes every shard's advisory lock before it touches a counter row. Deleting the
    rows of a shard while a writer holds some of them and wants more would otherwise close a
    cycle that PostgreSQL breaks by failing one of the two (docs/reports.md)."""
    import psycopg

    from workflow_service.reports import fold_counts

    url = new_pg_schema(pg_server_url)
    db = open_database(make_settings(url))
    Migrator(db).up()
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    writer = psycopg.connect(conninfo, autocommit=True)
    watcher = psycopg.connect(conninfo, autocommit=True)
    record_id = str(uuid.uuid4())
    writer.execute("INSERT INTO records (id, source, category, payload, status, attempts, created_at, updated_at,"
                   " available_at) VALUES (%s, 's', 'c', '{}', 'pending', 0, now(), now(), now())", (record_id,))
    errors = []

    def fold():
        try:
            fold_counts(db)
        except Exception as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=fold)
    try:
        with writer.transaction():
            writer.execute("UPDATE records SET status = 'processed' WHERE id = %s", (record_id,))
            thread.start()
            deadline = time.monotonic() + 10
            while watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
                                  "AND datname = current_database()").fetchone()[0] == 0:
                assert time.monotonic() < deadline, "the fold never waited for a shard's lock"
        thread.join(timeout=30)
        assert not thread.is_alive() and errors == []
        assert dict(watcher.execute("SELECT status, n FROM record_counts").fetchall()) == {"processed": 1}
        with db.read() as s:
            assert s.all("audit_count_mismatches") == []  # (the record has no audit trail: inserted by hand)
    finally:
        writer.close()
        watcher.close()
        db.close()


def test_postgresql_a_fold_gives_up_after_a_second_on_a_shard_held_open(pg_server_url):
    """A transaction left open after changing counts (an operator's psql session) holds its shard:
    the fold waits a second, then gives up, so that writers do not queue behind it for longer;
    its connection stays in the pool, the worker's cleanup goes on, and a later fold succeeds."""
    import psycopg

    from workflow import build_registry
    from workflow_service.errors import DatabaseUnavailable
    from workflow_service.reports import fold_counts
    from workflow_service.worker import Worker

    url = new_pg_schema(pg_server_url)
    settings = make_settings(url)
    db = open_database(settings)
    Migrator(db).up()
    session = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))  # not autocommit
    try:
        session.execute("INSERT INTO records (id, source, category, payload, status, attempts, created_at,"
                        " updated_at, available_at) VALUES (%s, 's', 'c', '{}', 'pending', 0, now(), now(), now())",
                        (str(uuid.uuid4()),))
        with db.read() as s:
            backend = s.one_sql("SELECT pg_backend_pid() AS pid")["pid"]
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            fold_counts(db)
        assert 0.9 < time.monotonic() - started < 10
        with db.read() as s:  # refused a lock, not lost: the same connection serves the next unit
            assert s.one_sql("SELECT pg_backend_pid() AS pid")["pid"] == backend
        Worker(db, build_registry(settings)).cleanup(force=True)  # logs, does not raise
        session.commit()
        fold_counts(db)
        with db.read() as s:
            assert s.all_sql("SELECT shard, n FROM record_counts") == [{"shard": 0, "n": 1}]
    finally:
        session.close()
        db.close()


def test_postgresql_the_fold_locks_every_shard_the_triggers_use(pg_server_url):
    """`lock_count_shards` names the shards 0-15; the count triggers pick theirs by backend pid
    mod 16. A migration that changed one would leave a shard the fold does not lock."""
    import re

    from workflow_service.sqlfiles import load_queries

    url = new_pg_schema(pg_server_url)
    db = open_database(make_settings(url))
    Migrator(db).up()
    try:
        with db.read() as s:
            sources = [row["src"] for row in s.all_sql(
                "SELECT prosrc AS src FROM pg_proc WHERE proname LIKE 'record_counts_track%' "
                "AND pronamespace = to_regnamespace(current_schema())")]  # this test's schema only
    finally:
        db.close()
    moduli = {int(m) for src in sources for m in re.findall(r"pg_backend_pid\(\)\s*%\s*(\d+)", src)}
    locked = re.search(r"generate_series\(0,\s*(\d+)\)", load_queries("postgresql")["lock_count_shards"])
    assert len(sources) == 3 and moduli == {int(locked.group(1)) + 1}
