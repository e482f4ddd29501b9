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
