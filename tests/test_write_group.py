"""How creates write: a group commit on SQLite (db.WriteGroup), one statement on PostgreSQL."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import hold_writer_gate, make_settings

from workflow import create_app
from workflow_service.db import WriteGroup
from workflow_service.errors import DatabaseUnavailable
from workflow_service.migrations import Migrator
from workflow_service.records import insert_records, new_rows
from workflow_service.timeutil import utc_now_text


def insert_one(s, category: str) -> str:
    """Insert a record of `category` in session `s`; return its id."""
    rows = new_rows([{"source": "s", "category": category, "payload": {}}])
    insert_records(s, rows, "req", utc_now_text())
    return rows[0]["id"]


def categories(db) -> list[str]:
    with db.read() as s:
        return sorted(row["category"] for row in s.all_sql("SELECT category FROM records"))


def test_write_grouped_commits_its_work_or_none_of_it(make_app):
    db = make_app().app.db
    assert len(db.write_grouped(lambda s: insert_one(s, "kept"))) == 36

    def fails(s):
        insert_one(s, "undone")
        raise ValueError("the work's own error")

    with pytest.raises(ValueError, match="the work's own error"):
        db.write_grouped(fails)
    assert categories(db) == ["kept"]


class Group:
    """A SQLite app whose first write holds the transaction until `release` is set, while more
    calls queue behind it; every call's outcome is kept by name."""

    def __init__(self, tmp_path, **env: str):
        self.wsgi = create_app(make_settings(f"sqlite:///{tmp_path / 'x.db'}", **env))
        Migrator(self.wsgi.db).up()
        self.db = self.wsgi.db
        self.started, self.release = threading.Event(), threading.Event()
        self.outcomes: dict[str, object] = {}
        self.sessions: dict[str, tuple[int, object]] = {}
        self.threads: list[threading.Thread] = []

    def call(self, name: str, work, records: int = 1) -> None:
        def run():
            try:
                self.outcomes[name] = self.db.write_grouped(work, records)
            except Exception as exc:
                self.outcomes[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def holding(self, name: str):
        def work(s):
            self.sessions[name] = (threading.get_ident(), s)
            self.started.set()
            assert self.release.wait(10)
            return insert_one(s, name)

        return work

    def inserting(self, name: str, then=None):
        def work(s):
            self.sessions[name] = (threading.get_ident(), s)
            record_id = insert_one(s, name)
            if then:
                then(s)
            return record_id

        return work

    def start_leader(self) -> None:
        self.call("leader", self.holding("leader"))
        assert self.started.wait(10)

    def queue_while_another_process_writes(self, *calls: tuple[str, int]) -> None:
        """Call `(name, records)` in order while another process holds the writer gate: the first
        leads and waits for the gate, the others queue behind it; then the gate is let go."""
        self.db.write_grouped(lambda s: None)  # the process's group exists before the gate is taken
        fd = hold_writer_gate(self.db.path)
        try:
            for queued, (name, records) in enumerate(calls, start=1):
                self.call(name, self.inserting(name), records)
                self.wait_queued(queued)  # the leader's own call stays queued while it waits
        finally:
            os.close(fd)  # the other process's write ends
        self.finish()

    def wait_queued(self, count: int) -> None:
        group = self.db._group
        for _ in range(1000):  # at most 10 s
            with group._changed:
                if len(group._queue) == count:
                    return
            time.sleep(0.01)
        raise AssertionError(f"{len(group._queue)} calls queued, not {count}")

    def finish(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()
        self.db.close()


def test_calls_queued_during_a_commit_are_committed_together_by_one_thread(tmp_path):
    group = Group(tmp_path)
    group.start_leader()
    group.call("b", group.inserting("b"))
    group.call("c", group.inserting("c"))
    group.wait_queued(2)
    group.finish()
    assert {name: len(outcome) for name, outcome in group.outcomes.items()} == {"leader": 36, "b": 36, "c": 36}
    (b_thread, b_session), (c_thread, c_session) = group.sessions["b"], group.sessions["c"]
    assert b_thread == c_thread != group.sessions["leader"][0]
    assert b_session is c_session  # one transaction
    assert categories(group.db) == ["b", "c", "leader"]


def test_calls_that_arrive_while_another_process_writes_join_the_waiting_leaders_transaction(tmp_path):
    # Another process holds the writer gate: the leader waits for it with the queue still open, so
    # that what arrives meanwhile is committed with it, not in a transaction of its own after it.
    group = Group(tmp_path)
    group.queue_while_another_process_writes(("a", 1), ("b", 1), ("c", 1))
    assert {name: len(outcome) for name, outcome in group.outcomes.items()} == {"a": 36, "b": 36, "c": 36}
    threads = {thread for thread, _ in group.sessions.values()}
    sessions = {id(session) for _, session in group.sessions.values()}
    assert len(threads) == 1 and len(sessions) == 1  # one leader, one transaction
    assert categories(group.db) == ["a", "b", "c"]


def test_a_transaction_takes_calls_for_at_most_one_full_batch_of_records(tmp_path):
    # Two 600-record calls would make a transaction larger than one full batch (and its savepoints
    # hold more pages in memory): the second waits for the next transaction; a small call still joins.
    group = Group(tmp_path)
    group.queue_while_another_process_writes(("a", 600), ("b", 600), ("c", 1))
    assert WriteGroup.MAX_RECORDS == 1000
    assert group.sessions["a"][1] is group.sessions["c"][1]  # one transaction
    assert group.sessions["b"][1] is not group.sessions["a"][1]
    assert categories(group.db) == ["a", "b", "c"]


def test_a_call_that_raises_in_a_group_undoes_only_its_own_statements(tmp_path):
    def fail(s):
        raise ValueError("b's own error")

    group = Group(tmp_path)
    group.start_leader()
    group.call("b", group.inserting("b", then=fail))
    group.call("c", group.inserting("c"))
    group.wait_queued(2)
    group.finish()
    assert isinstance(group.outcomes["b"], ValueError)
    assert len(group.outcomes["c"]) == 36
    assert categories(group.db) == ["c", "leader"]


def test_a_database_error_fails_the_whole_group_with_503s(tmp_path):
    def broken_sql(s):
        s.script("INSERT INTO no_such_table VALUES (1)")

    group = Group(tmp_path)
    group.start_leader()
    group.call("b", group.inserting("b"))
    group.call("c", group.inserting("c", then=broken_sql))
    group.wait_queued(2)
    group.finish()
    assert isinstance(group.outcomes["b"], DatabaseUnavailable)
    assert isinstance(group.outcomes["c"], DatabaseUnavailable)
    assert group.outcomes["b"] is not group.outcomes["c"]
    assert categories(group.db) == ["leader"]


def test_a_call_still_queued_at_the_timeout_is_a_503_and_never_runs(tmp_path):
    group = Group(tmp_path, DB_TIMEOUT_SECONDS="0.2")
    group.start_leader()
    group.call("late", group.inserting("late"))
    group.threads[-1].join(10)  # gives up while the leader still holds the transaction
    assert isinstance(group.outcomes["late"], DatabaseUnavailable)
    group.finish()
    assert "late" not in group.sessions
    assert categories(group.db) == ["leader"]


@pytest.mark.parametrize("path", ["/records", "/records/batch"])
def test_a_keyless_create_is_one_statement_on_postgresql_grouped_on_sqlite(make_app, dialect, monkeypatch, path):
    """PostgreSQL: the records and their events in one statement, in autocommit (one round trip);
    SQLite: the group commit's transaction. Either way the records and their events are stored."""
    app = make_app()
    db = app.app.db
    units, statements = [], []
    real_unit = type(db)._unit

    def spy_unit(self, *args, **kwargs):
        units.append(args[0])
        return real_unit(self, *args, **kwargs)

    real_statement = type(db).write_statement
    monkeypatch.setattr(type(db), "_unit", spy_unit)
    monkeypatch.setattr(type(db), "write_statement", lambda self, name, params: statements.append(name)
                        or real_statement(self, name, params))
    bodies = [{"source": "s", "category": "c", "payload": {"n": n}} for n in range(3 if "batch" in path else 1)]
    sent = {"records": bodies} if "batch" in path else bodies[0]
    answer = app.post_json(path, sent, headers={"X-Request-ID": "one-statement"}, status=201).json
    records = answer["items"] if "batch" in path else [answer]
    if dialect == "postgresql":
        assert units == [None] and statements == ["insert_records_with_events"]
    else:
        assert units == ["write"] and statements == []
    for record in records:
        events = app.get(f"/records/{record['id']}/events").json["items"]
        assert [(e["to_status"], e["request_id"]) for e in events] == [("pending", "one-statement")]
        assert app.get(f"/records/{record['id']}").json == record  # the response is what was stored
    assert app.get("/records").json["total"] == len(bodies)
