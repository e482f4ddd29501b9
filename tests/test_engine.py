"""The workflow engine in process: retry, processors, backoff, worker, batch, idempotency."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from conftest import audit_mismatches, make_settings, new_pg_schema
from webtest import TestApp

from workflow import TransientError, build_registry, create_app
from workflow_service.config import ConfigError
from workflow_service.db import Session, _PostgresSession, open_database
from workflow_service.errors import DatabaseUnavailable
from workflow_service.migrations import Migrator
from workflow_service.states import PROCESSED, ProcessorRegistry, transition
from workflow_service.timeutil import later, to_text, utc_now_text
from workflow_service.worker import Worker, run_workers


class Clock:
    """A settable clock in the stored text form."""

    def __init__(self):
        self.moment = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> str:
        return to_text(self.moment)

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def events(app, record_id):
    return [(e["from_status"], e["to_status"]) for e in app.get(f"/records/{record_id}/events").json["items"]]


# ---------------------------------------------------------------- retry


def test_retry_moves_failed_back_to_pending_keeping_attempts(app, create_record):
    record = create_record(payload={"priority": "bad"})
    failed = app.post(f"/records/{record['id']}/process").json
    assert failed["status"] == "failed" and failed["attempts"] == 1
    retried = app.post(f"/records/{record['id']}/retry").json
    assert retried["status"] == "pending" and retried["attempts"] == 1
    assert retried["processed_at"] is None
    again = app.post(f"/records/{record['id']}/process").json
    assert again["status"] == "failed" and again["attempts"] == 2
    assert events(app, record["id"]) == [
        (None, "pending"), ("pending", "failed"), ("failed", "pending"), ("pending", "failed"),
    ]


@pytest.mark.parametrize("prepare", ["pending", "processed"])
def test_retry_from_any_other_state_is_409(app, create_record, prepare):
    record = create_record(payload={"priority": 1})
    if prepare == "processed":
        app.post(f"/records/{record['id']}/process")
    resp = app.post(f"/records/{record['id']}/retry", expect_errors=True)
    assert resp.status_int == 409
    assert resp.json["error"]["details"] == {"status": prepare}


def test_retry_unknown_is_404(app):
    assert app.post("/records/00000000-0000-4000-8000-000000000000/retry", expect_errors=True).status_int == 404


# ----------------------------------------------------------- processors


def test_category_schema_failure_lists_every_violation(make_app, tmp_path):
    (tmp_path / "order.json").write_text(json.dumps({
        "type": "object",
        "required": ["amount", "currency"],
        "properties": {"amount": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD"]}},
    }))
    app = make_app(CATEGORY_SCHEMAS_DIR=str(tmp_path))
    bad = app.post_json("/records", {"source": "s", "category": "order", "payload": {"amount": -1, "currency": "X"}})
    done = app.post(f"/records/{bad.json['id']}/process").json
    assert done["status"] == "failed"
    assert "amount" in done["error"] and "currency" in done["error"] and ";" in done["error"]
    good = app.post_json("/records", {"source": "s", "category": "order",
                                      "payload": {"amount": 5, "currency": "EUR", "priority": 4}})
    assert app.post(f"/records/{good.json['id']}/process").json["classification"] == "medium"
    other = app.post_json("/records", {"source": "s", "category": "other", "payload": {}})
    assert app.post(f"/records/{other.json['id']}/process").json["status"] == "processed"


def test_invalid_category_schema_stops_start_up(database_url, tmp_path):
    (tmp_path / "broken.json").write_text('{"type": 12}')
    with pytest.raises(ConfigError, match="broken.json"):
        create_app(make_settings(database_url, CATEGORY_SCHEMAS_DIR=str(tmp_path)))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        create_app(make_settings(database_url, CATEGORY_SCHEMAS_DIR=str(tmp_path)))


def test_processor_result_must_be_json(make_app):
    app = make_app(processors={"x": lambda p, r: {"when": datetime.now()}})
    rec = app.post_json("/records", {"source": "s", "category": "x", "payload": {}}).json
    done = app.post(f"/records/{rec['id']}/process").json
    assert done["status"] == "failed" and "not JSON" in done["error"]


# ------------------------------------------------------ transient errors


def test_transient_errors_back_off_then_give_up(make_app, database_url):
    clock = Clock()
    calls = []

    def flaky(payload, record):
        calls.append(clock())
        raise TransientError("upstream timeout")

    settings = make_settings(database_url, MAX_ATTEMPTS="3", RETRY_BASE_SECONDS="10")
    app = make_app(processors={"flaky": flaky}, MAX_ATTEMPTS="3", RETRY_BASE_SECONDS="10")
    wsgi = app.app
    rec = app.post_json("/records", {"source": "s", "category": "flaky", "payload": {}}).json
    worker = Worker(wsgi.db, build_registry(settings, {"flaky": flaky}), now=clock)
    clock.advance(1)

    first = worker.run_batch()
    assert (first.claimed, first.retried_later) == (1, 1)
    after_one = app.get(f"/records/{rec['id']}").json
    assert after_one["status"] == "pending" and after_one["attempts"] == 1
    assert after_one["error"] == "upstream timeout"

    clock.advance(9)  # backoff after attempt 1 is 10 s: not yet eligible
    assert worker.run_batch().claimed == 0
    clock.advance(1)
    assert worker.run_batch().retried_later == 1  # attempt 2; next backoff is 20 s
    clock.advance(19)
    assert worker.run_batch().claimed == 0
    clock.advance(1)
    third = worker.run_batch()
    assert (third.claimed, third.failed) == (1, 1)

    final = app.get(f"/records/{rec['id']}").json
    assert final["status"] == "failed" and final["attempts"] == 3
    assert "upstream timeout" in final["error"] and "3 attempts" in final["error"]
    assert len(calls) == 3
    assert events(app, rec["id"]) == [
        (None, "pending"), ("pending", "pending"), ("pending", "pending"), ("pending", "failed"),
    ]


def test_transient_then_success(make_app):
    state = {"n": 0}

    def sometimes(payload, record):
        state["n"] += 1
        if state["n"] == 1:
            raise TransientError("try later")
        return {"score": 5, "classification": "medium"}

    app = make_app(processors={"c": sometimes}, RETRY_BASE_SECONDS="0")
    rec = app.post_json("/records", {"source": "s", "category": "c", "payload": {}}).json
    first = app.post(f"/records/{rec['id']}/process").json
    assert first["status"] == "pending" and first["attempts"] == 1
    second = app.post(f"/records/{rec['id']}/process").json
    assert second["status"] == "processed" and second["attempts"] == 2 and second["score"] == 5.0


# ---------------------------------------------------------------- worker


def test_worker_drains_everything_once(make_app, database_url):
    seen = []
    settings = make_settings(database_url)
    processors = {"w": lambda p, r: seen.append(r["id"]) or {"ok": True}}
    app = make_app(processors=processors)
    wsgi = app.app
    ids = [r["id"] for r in app.post_json("/records/batch", {
        "records": [{"source": "s", "category": "w" if i % 3 else "builtin", "payload": {"priority": i}}
                    for i in range(25)]}).json["items"]]
    worker = Worker(wsgi.db, build_registry(settings, processors), batch_size=4)
    totals = worker.drain()
    assert totals.claimed == 25 and totals.processed == 25
    assert sorted(seen) == sorted(i for n, i in enumerate(ids) if n % 3)
    assert worker.drain().claimed == 0
    for rid in ids:
        assert events(app, rid) == [(None, "pending"), ("pending", "processed")]


def test_worker_and_api_never_both_win(make_app, database_url):
    settings = make_settings(database_url)
    app = make_app()
    wsgi = app.app
    rec = app.post_json("/records", {"source": "s", "category": "c", "payload": {}}).json
    transition(wsgi.db, rec["id"], PROCESSED, registry=ProcessorRegistry())
    assert Worker(wsgi.db, build_registry(settings)).drain().claimed == 0
    assert app.post(f"/records/{rec['id']}/process", expect_errors=True).status_int == 409


def test_worker_batch_of_mixed_outcomes_stores_each_with_its_event_and_counts(make_app, database_url):
    """One batch: successes, transient errors, processor errors and the built-in rule's failures."""
    clock = Clock()

    def mixed(payload, record):
        if payload["kind"] == "later":
            raise TransientError("upstream down")
        if payload["kind"] == "boom":
            raise ValueError("boom")
        return {"score": 0.1 + payload["n"], "classification": f"c{payload['n']}"}

    settings = make_settings(database_url, RETRY_BASE_SECONDS="10")
    app = make_app(processors={"m": mixed}, clock=clock, RETRY_BASE_SECONDS="10")
    kinds = ["ok", "later", "boom", "rule"] * 8
    bodies = [{"source": f"s{n % 3}", "category": "builtin" if kind == "rule" else "m",
               "payload": {"kind": kind, "n": n, "priority": "x"}} for n, kind in enumerate(kinds)]
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": bodies}).json["items"]]
    clock.advance(1)
    worker = Worker(app.app.db, build_registry(settings, {"m": mixed}), batch_size=100, now=clock)

    stats = worker.run_batch("batch-actor")
    assert (stats.claimed, stats.processed, stats.failed, stats.retried_later) == (32, 8, 16, 8)
    stamp = clock()
    for n, (rid, kind) in enumerate(zip(ids, kinds, strict=True)):
        rec = app.get(f"/records/{rid}").json
        trail = app.get(f"/records/{rid}/events").json["items"]
        assert rec["attempts"] == 1 and rec["updated_at"] == stamp
        assert [(e["from_status"], e["to_status"], e["request_id"]) for e in trail] == [
            (None, "pending", trail[0]["request_id"]), ("pending", rec["status"], "batch-actor")]
        if kind == "ok":
            assert (rec["status"], rec["score"], rec["classification"], rec["error"]) == (
                "processed", 0.1 + n, f"c{n}", None)
            assert rec["result"] == {"score": 0.1 + n, "classification": f"c{n}"} and rec["processed_at"] == stamp
        elif kind == "later":
            assert (rec["status"], rec["error"], rec["processed_at"]) == ("pending", "upstream down", None)
            assert trail[1]["detail"] == f"attempt 1 failed, retry after {later(stamp, 10)}: upstream down"
        else:
            assert rec["status"] == "failed" and rec["processed_at"] == stamp
            assert rec["error"] == ("boom" if kind == "boom" else "invalid priority") == trail[1]["detail"]
    assert app.get("/reports/summary").json["totals"] == {"all": 32, "pending": 8, "processed": 8, "failed": 16}
    assert audit_mismatches(app.app.db) == []
    clock.advance(9)
    assert worker.run_batch().claimed == 0  # the transient ones wait out their backoff
    clock.advance(1)
    assert worker.run_batch().retried_later == 8


UNSTORABLE = {"nul": "bad\x00value", "surrogate": "bad\udc80value", "both": "\ud83d\x00\ude00"}
STORED = {"nul": "bad\ufffdvalue", "surrogate": "bad\ufffdvalue", "both": "\ufffd\ufffd\ufffd"}


def poisoned(payload, record):
    """A processor whose texts neither database can store as they are."""
    text = UNSTORABLE[payload["text"]]
    if payload["how"] == "raise":
        raise ValueError(text)
    if payload["how"] == "transient":
        raise TransientError(text)
    return {"classification": text, "note": text}


def check_poisoned(app, rid: str, text: str, how: str) -> None:
    rec = app.get(f"/records/{rid}").json
    detail = app.get(f"/records/{rid}/events").json["items"][-1]["detail"]
    if how == "raise":
        assert (rec["status"], rec["error"], detail) == ("failed", STORED[text], STORED[text])
    elif how == "transient":
        assert (rec["status"], rec["error"]) == ("pending", STORED[text]) and detail.endswith(": " + STORED[text])
    else:  # the result is JSON text, where an escape says what the processor gave
        assert (rec["status"], rec["classification"]) == ("processed", STORED[text])
        assert rec["result"] == {"classification": UNSTORABLE[text], "note": UNSTORABLE[text]}


HOWS = [(text, how) for text in UNSTORABLE for how in ("raise", "transient", "classify")]


@pytest.mark.parametrize(("text", "how"), HOWS)
def test_a_processors_unstorable_text_is_stored_with_replacement_characters(make_app, text, how):
    """NUL (PostgreSQL text cannot hold it) and lone surrogates (UTF-8 cannot encode them) in an
    error or a classification were a 500 on one database or both; now U+FFFD stands for each."""
    app = make_app(processors={"p": poisoned})
    rid = app.post_json("/records", {"source": "s", "category": "p", "payload": {"text": text, "how": how}}).json["id"]
    assert app.post(f"/records/{rid}/process").json == app.get(f"/records/{rid}").json
    check_poisoned(app, rid, text, how)
    assert audit_mismatches(app.app.db) == []


def test_a_worker_batch_with_unstorable_texts_stores_every_record(make_app, database_url):
    """One poisoned record used to fail its whole batch, and the worker with it, every time it
    claimed the batch again."""
    settings = make_settings(database_url)
    app = make_app(processors={"p": poisoned})
    bodies = [{"source": "s", "category": "p", "payload": {"text": text, "how": how}} for text, how in HOWS]
    bodies += [{"source": "s", "category": "builtin", "payload": {"priority": 5}}] * 3
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": bodies}).json["items"]]
    stats = Worker(app.app.db, build_registry(settings, {"p": poisoned}), batch_size=100).run_batch()
    assert (stats.claimed, stats.retried_later) == (len(bodies), len(UNSTORABLE))
    for rid, (text, how) in zip(ids, HOWS, strict=False):
        check_poisoned(app, rid, text, how)
    assert [app.get(f"/records/{rid}").json["status"] for rid in ids[-3:]] == ["processed"] * 3
    assert audit_mismatches(app.app.db) == []


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no message")


def odd(payload, record):
    """A processor whose outcomes broke `ProcessorRegistry.run`'s promise never to raise."""
    if payload["how"] == "huge score":
        return {"score": -(10**400), "n": 1}  # json writes it; float() of it overflows
    if payload["how"] == "unprintable":
        raise Unprintable()
    deep: dict = {}
    for _ in range(100_000):
        deep = {"d": deep}
    return deep


def check_odd(app, rid: str, how: str) -> None:
    rec = app.get(f"/records/{rid}").json
    if how == "huge score":
        assert (rec["status"], rec["score"], rec["result"]) == ("processed", None, {"score": -(10**400), "n": 1})
    elif how == "unprintable":
        assert (rec["status"], rec["error"]) == ("failed", "Unprintable")
    else:
        assert rec["status"] == "failed" and rec["error"].startswith("processor result is not JSON")


ODD_HOWS = ["huge score", "unprintable", "deep"]


@pytest.mark.parametrize("how", ODD_HOWS)
def test_odd_processor_outcomes_are_a_records_outcome_not_a_500(make_app, how):
    app = make_app(processors={"o": odd})
    rid = app.post_json("/records", {"source": "s", "category": "o", "payload": {"how": how}}).json["id"]
    assert app.post(f"/records/{rid}/process").json == app.get(f"/records/{rid}").json
    check_odd(app, rid, how)


def test_a_worker_batch_with_odd_processor_outcomes_stores_every_record(make_app, database_url):
    app = make_app(processors={"o": odd})
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": [
        {"source": "s", "category": "o", "payload": {"how": how}} for how in ODD_HOWS]}).json["items"]]
    stats = Worker(app.app.db, build_registry(make_settings(database_url), {"o": odd}), batch_size=10).run_batch()
    assert stats.claimed == len(ODD_HOWS)
    for rid, how in zip(ids, ODD_HOWS, strict=True):
        check_odd(app, rid, how)
    assert audit_mismatches(app.app.db) == []


def test_postgresql_worker_stores_a_batch_in_two_statements(pg_server_url, monkeypatch):
    url = new_pg_schema(pg_server_url)
    settings = make_settings(url)
    db = open_database(settings)
    Migrator(db).up()
    app = TestApp(create_app(settings, db=db))
    app.post_json("/records/batch", {"records": [{"source": "s", "category": "c", "payload": {"priority": i}}
                                                 for i in range(40)]})
    names = []

    def recording(original):
        def method(self, name, params=None):
            names.append(name)
            return original(self, name, params)
        return method

    for method in ("one", "all", "run"):
        monkeypatch.setattr(Session, method, recording(getattr(Session, method)))
    real_between = _PostgresSession.all_between

    def all_between(self, before, name, params, after):
        names.append((before, name, after))
        return real_between(self, before, name, params, after)

    monkeypatch.setattr(_PostgresSession, "all_between", all_between)
    stats = Worker(db, build_registry(settings), batch_size=50).run_batch()
    assert stats.claimed == 40 and stats.processed + stats.failed == 40
    assert names == [("claim_pending_plan", "claim_pending", "claim_pending_plan_end"), "set_outcomes", "insert_events"]
    monkeypatch.undo()
    assert audit_mismatches(db) == []
    db.close()


def test_postgresql_an_update_statement_changes_each_count_row_once(pg_server_url):
    """Migration 0009: 60 records of 2 categories change status in one statement, and 6 counter
    rows are written (each category's pending, processed and failed), not 2 for each record."""
    url = new_pg_schema(pg_server_url)
    db = open_database(make_settings(url))
    Migrator(db).up()
    with db.write() as s:
        s.run("insert_records_with_events", {"rows": json.dumps(
            [{"id": str(uuid.uuid4()), "source": "s", "category": f"c{i % 2}", "payload": "{}"} for i in range(60)]),
            "now": "2030-01-01T00:00:00.000000Z", "request_id": "r"})
    written = "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::int AS n FROM pg_stat_xact_user_tables " \
              "WHERE relname = 'record_counts'"
    advisory = "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    with db.write() as s:
        seen = {"c0": 0, "c1": 0}
        outcomes = []
        for row in s.all_sql("SELECT id::text AS id, category FROM records"):
            seen[row["category"]] += 1
            outcomes.append({"id": row["id"], "from_status": "pending",
                             "to_status": "failed" if seen[row["category"]] % 3 == 0 else "processed",
                             "result": None, "classification": None, "score": None, "error": None, "attempt": 1,
                             "now": "2030-01-01T00:00:01.000000Z", "processed_at": "2030-01-01T00:00:01.000000Z",
                             "available_at": None})
        before = s.one_sql(written)["n"]  # the backend's counts not yet reported, earlier transactions' too
        assert len(s.all("set_outcomes", {"outcomes": json.dumps(outcomes)})) == 60
        # 6 upserts; one that updates may count as an insert attempt too. The row trigger before 0009
        # made 2 upserts a record: 120.
        assert 6 <= s.one_sql(written)["n"] - before <= 12
    with db.write() as s:  # updates that move no count take no lock and write no count
        before = s.one_sql(written)["n"]
        s.all("set_outcomes", {"outcomes": "[]"})
        assert len(s.all_sql("UPDATE records SET error = 'noted' WHERE category = 'c0' RETURNING id")) == 30
        assert (s.one_sql(written)["n"] - before, s.one_sql(advisory)["n"]) == (0, 0)
    with db.read() as s:
        counts = {(r["category"], r["status"]): r["n"] for r in s.all_sql(
            "SELECT category, status, sum(n)::int AS n FROM record_counts GROUP BY 1, 2 HAVING sum(n) <> 0")}
        assert s.all("audit_count_mismatches") == []  # (no events were written here: only the counts)
    assert counts == {("c0", "processed"): 20, ("c0", "failed"): 10, ("c1", "processed"): 20, ("c1", "failed"): 10}
    db.close()


# ----------------------------------------------------------------- batch


def test_batch_creates_all_in_order(app):
    body = {"records": [{"source": f"s{i}", "category": "c", "payload": {"i": i}} for i in range(1000)]}
    resp = app.post_json("/records/batch", body)
    assert resp.status_int == 201 and resp.json["count"] == 1000
    assert [r["payload"]["i"] for r in resp.json["items"]] == list(range(1000))
    stored = app.get(f"/records/{resp.json['items'][500]['id']}").json
    assert stored == resp.json["items"][500]
    assert app.get("/records").json["total"] == 1000


@pytest.mark.parametrize(
    ("records", "locs"),
    [
        ([], [["body", "records"]]),
        ([{"source": "s", "category": "c", "payload": {}}] * 1001, [["body", "records"]]),
        ([{"source": "s", "category": "c", "payload": {}}, {"source": "", "category": "c", "payload": {}},
          {"source": "s", "payload": []}],
         [["body", "records", 1, "source"], ["body", "records", 2, "category"], ["body", "records", 2, "payload"]]),
        ("nope", [["body", "records"]]),
    ],
    ids=["empty", "too-many", "bad-items", "not-a-list"],
)
def test_batch_validation_is_all_or_nothing(app, records, locs):
    resp = app.post_json("/records/batch", {"records": records}, expect_errors=True)
    assert resp.status_int == 422
    assert sorted(d["loc"] for d in resp.json["error"]["details"]) == sorted(locs)
    assert app.get("/records").json["total"] == 0


def test_batch_rejects_unknown_fields_and_hostile_items(app):
    resp = app.post("/records/batch", b'{"records": [{"source": "s", "category": "c", "payload": {"x": "\\u0000"}}]}',
                    headers={"Content-Type": "application/json"}, expect_errors=True)
    assert resp.status_int == 422
    assert resp.json["error"]["details"][0]["loc"][:3] == ["body", "records", 0]
    resp = app.post_json("/records/batch", {"records": [{"source": "s", "category": "c", "payload": {}}], "x": 1},
                         expect_errors=True)
    assert resp.status_int == 422
    assert app.get("/records").json["total"] == 0


# ----------------------------------------------------------- idempotency


def test_same_key_same_body_replays(app):
    body = {"source": "s", "category": "c", "payload": {"a": 1, "b": [1, 2]}}
    first = app.post_json("/records", body, headers={"Idempotency-Key": "key-1"})
    reordered = {"payload": {"b": [1, 2], "a": 1}, "category": "c", "source": "s"}
    second = app.post_json("/records", reordered, headers={"Idempotency-Key": "key-1"})
    assert second.status_int == 201 and second.json == first.json
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert app.get("/records").json["total"] == 1


def test_same_key_different_body_is_409(app):
    app.post_json("/records", {"source": "s", "category": "c", "payload": {}}, headers={"Idempotency-Key": "k2"})
    resp = app.post_json("/records", {"source": "s", "category": "d", "payload": {}},
                         headers={"Idempotency-Key": "k2"}, expect_errors=True)
    assert resp.status_int == 409 and resp.json["error"]["code"] == "CONFLICT"
    resp = app.post_json("/records/batch", {"records": [{"source": "s", "category": "c", "payload": {}}]},
                         headers={"Idempotency-Key": "k2"}, expect_errors=True)
    assert resp.status_int == 409
    assert app.get("/records").json["total"] == 1


def test_batch_idempotency(app):
    body = {"records": [{"source": "s", "category": "c", "payload": {"i": i}} for i in range(5)]}
    first = app.post_json("/records/batch", body, headers={"Idempotency-Key": "batch-1"})
    second = app.post_json("/records/batch", body, headers={"Idempotency-Key": "batch-1"})
    assert second.json == first.json
    assert app.get("/records").json["total"] == 5


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "ключ"])
def test_bad_idempotency_keys_are_422(app, key):
    resp = app.post_json("/records", {"source": "s", "category": "c", "payload": {}},
                         headers={"Idempotency-Key": key}, expect_errors=True)
    assert resp.status_int == 422
    assert resp.json["error"]["details"][0]["loc"] == ["header", "Idempotency-Key"]


def test_rejected_request_does_not_consume_the_key(app):
    bad = app.post_json("/records", {"source": "", "category": "c", "payload": {}},
                        headers={"Idempotency-Key": "k3"}, expect_errors=True)
    assert bad.status_int == 422
    good = app.post_json("/records", {"source": "s", "category": "c", "payload": {}}, headers={"Idempotency-Key": "k3"})
    assert good.status_int == 201


def test_eight_concurrent_requests_with_one_key_create_one_record(make_app):
    wsgi = make_app().app
    body = {"source": "s", "category": "c", "payload": {"n": 1}}
    barrier = threading.Barrier(8)
    results = []

    def send():
        app = TestApp(wsgi)
        barrier.wait(timeout=10)
        resp = app.post_json("/records", body, headers={"Idempotency-Key": "same"}, expect_errors=True)
        results.append((resp.status_int, resp.json.get("id")))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 8
    assert {status for status, _ in results} == {201}
    assert len({rid for _, rid in results}) == 1
    assert TestApp(wsgi).get("/records").json["total"] == 1


def test_cleanup_expires_only_old_keys(make_app):
    from workflow_service.idempotency import expire

    app = make_app()
    wsgi = app.app
    app.post_json("/records", {"source": "s", "category": "c", "payload": {}}, headers={"Idempotency-Key": "old"})
    assert expire(wsgi.db, 24) == 0
    assert expire(wsgi.db, 24, now=lambda: later(utc_now_text(), 25 * 3600)) == 1
    again = app.post_json("/records", {"source": "s", "category": "c", "payload": {}},
                          headers={"Idempotency-Key": "old"})
    assert "Idempotent-Replayed" not in again.headers


def test_audit_command_finds_a_tampered_record(make_app, database_url):
    import subprocess
    import sys

    from conftest import audit_mismatches
    from serverutil import ROOT, service_env

    app = make_app()
    rec = app.post_json("/records", {"source": "s", "category": "c", "payload": {}}).json
    app.post(f"/records/{rec['id']}/process")
    assert audit_mismatches(app.app.db) == []
    run = lambda: subprocess.run([sys.executable, "-m", "workflow", "audit"], cwd=ROOT, capture_output=True,  # noqa: E731
                                 text=True, env=service_env(DATABASE_URL=database_url), timeout=60)
    assert run().returncode == 0
    with app.app.db.write() as s:  # what no API can do: change a status without an event
        s.script(f"UPDATE records SET status = 'pending' WHERE id = '{rec['id']}'")
    assert [m.get("record_id") for m in audit_mismatches(app.app.db)] == [rec["id"]]
    result = run()
    assert result.returncode == 1 and rec["id"] in result.stdout


def test_maintained_counts_follow_every_change_and_the_audit_checks_them(make_app):
    from conftest import audit_mismatches

    app = make_app()
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": [
        {"source": f"s{i % 2}", "category": f"c{i % 3}", "payload": {"priority": "x" if i % 4 == 0 else i}}
        for i in range(12)]}).json["items"]]
    for rid in ids[:8]:
        app.post(f"/records/{rid}/process")
    app.post(f"/records/{ids[0]}/retry")
    assert audit_mismatches(app.app.db) == []
    with app.app.db.read() as s:
        truth = s.all_sql("SELECT category, source, status, count(*) AS n FROM records GROUP BY 1, 2, 3")
    summary = app.get("/reports/summary").json
    assert summary["totals"]["all"] == 12 == sum(row["n"] for row in truth)
    assert app.get("/records?status=failed").json["total"] == sum(r["n"] for r in truth if r["status"] == "failed")
    with app.app.db.write() as s:  # a counter that drifted would be found
        s.script("UPDATE record_counts SET n = n + 1 WHERE status = 'pending'")
    try:
        assert any("counted" in m for m in audit_mismatches(app.app.db))
    finally:  # the module's later tests share the database and audit it
        with app.app.db.write() as s:
            s.script("UPDATE record_counts SET n = n - 1 WHERE status = 'pending'")


# A trigger refuses to store some outcomes, as a constraint or a bug might: the worker must not
# stall its queue or stop on them. `when` is SQL on the new row.
REFUSE_TRIGGER = {
    "sqlite": ["CREATE TRIGGER test_refuse BEFORE UPDATE OF status ON records WHEN {when} "
               "BEGIN SELECT RAISE(ABORT, 'refused by test_refuse'); END"],
    "postgresql": ["CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'refused by test_refuse'; END $$",
                   "CREATE TRIGGER test_refuse BEFORE UPDATE OF status ON records FOR EACH ROW WHEN ({when}) "
                   "EXECUTE FUNCTION test_refuse()"],
}
DROP_REFUSE_TRIGGER = {"sqlite": ["DROP TRIGGER test_refuse"],
                       "postgresql": ["DROP TRIGGER test_refuse ON records", "DROP FUNCTION test_refuse()"]}


def run_sql(db, statements: list[str]) -> None:
    with db.write() as s:
        for statement in statements:
            s.script(statement)


def labelled(payload, record):
    return {"classification": payload["label"]}


def test_a_record_whose_outcome_cannot_be_stored_is_failed_and_its_batch_processed(make_app, database_url, dialect):
    """A batch that raised used to stop the worker, and every restart claimed the same batch again."""
    app = make_app(processors={"l": labelled})
    labels = ["a", "b", "poison", "c", "d"]
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": [
        {"source": "s", "category": "l", "payload": {"label": label}} for label in labels]}).json["items"]]
    db = app.app.db
    worker = Worker(db, build_registry(make_settings(database_url), {"l": labelled}), batch_size=10)
    run_sql(db, [sql.format(when="NEW.classification = 'poison'") for sql in REFUSE_TRIGGER[dialect]])
    try:
        stats = worker.run_batch()
        assert worker.drain().claimed == 0  # nothing left behind
    finally:
        run_sql(db, DROP_REFUSE_TRIGGER[dialect])
    assert (stats.claimed, stats.processed, stats.failed) == (5, 4, 1)
    records = {label: app.get(f"/records/{rid}").json for rid, label in zip(ids, labels, strict=True)}
    poisoned = records.pop("poison")
    assert poisoned["status"] == "failed" and poisoned["attempts"] == 1 and poisoned["classification"] is None
    assert poisoned["error"] == "the worker could not process this record ({})".format(
        "IntegrityError" if dialect == "sqlite" else "RaiseException")
    assert "refused" not in poisoned["error"]  # the database's message stays in the log
    assert [(r["status"], r["classification"]) for r in records.values()] == [("processed", x) for x in "abcd"]
    events = app.get(f"/records/{ids[2]}/events").json["items"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [(None, "pending"), ("pending", "failed")]
    assert audit_mismatches(db) == []


def test_a_batch_none_of_whose_records_can_be_stored_stops_the_worker_and_fails_none(make_app, database_url,
                                                                                      dialect):
    """When not even a failure can be stored, the cause is not a record's: nothing is set aside."""
    app = make_app()
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": [
        {"source": "s", "category": "c", "payload": {"priority": n}} for n in range(3)]}).json["items"]]
    db = app.app.db
    worker = Worker(db, build_registry(make_settings(database_url)), batch_size=10)
    run_sql(db, [sql.format(when="NEW.status <> 'pending'") for sql in REFUSE_TRIGGER[dialect]])
    try:
        with pytest.raises(Exception, match="refused by test_refuse"):
            worker.run_batch()
        assert {app.get(f"/records/{rid}").json["status"] for rid in ids} == {"pending"}
    finally:
        run_sql(db, DROP_REFUSE_TRIGGER[dialect])
    assert worker.drain().processed == 3
    assert audit_mismatches(db) == []


def test_a_failed_batchs_record_changed_since_its_claim_is_left_as_it_is(make_app, database_url):
    """Between the failed batch's rollback and its record's turn alone, another worker or a
    request may have moved the record on (or made it wait for a retry): it is not touched again."""
    app = make_app()
    rid = app.post_json("/records", {"source": "s", "category": "c", "payload": {"priority": "x"}}).json["id"]
    db = app.app.db
    with db.read() as s:
        claimed = s.one("get_record", {"id": rid})
    assert app.post(f"/records/{rid}/process").json["status"] == "failed"
    app.post(f"/records/{rid}/retry")  # pending again, as when the batch claimed it, but changed since
    stats = Worker(db, build_registry(make_settings(database_url)))._one_by_one([claimed], "w")
    assert (stats.claimed, stats.processed, stats.failed) == (1, 0, 0)
    events = app.get(f"/records/{rid}/events").json["items"]
    assert [e["to_status"] for e in events] == ["pending", "failed", "pending"]


def test_sqlite_a_payload_another_program_wrote_that_is_not_json_fails_its_record_only(tmp_path):
    """SQLite keeps a payload as text: a program other than this service can write one that is
    not JSON. (PostgreSQL's json column refuses it.)"""
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'w.db'}"))
    Migrator(app.db).up()
    try:
        client = TestApp(app)
        ids = [r["id"] for r in client.post_json("/records/batch", {"records": [
            {"source": "s", "category": "c", "payload": {"priority": n}} for n in range(3)]}).json["items"]]
        with app.db.write() as s:
            s.script(f"UPDATE records SET payload = '{{not json' WHERE id = '{ids[1]}'")
        stats = Worker(app.db, build_registry(app.settings)).run_batch()
        assert (stats.claimed, stats.processed, stats.failed) == (3, 2, 1)
        broken = client.get(f"/records/{ids[1]}/events").json["items"][-1]
        assert (broken["to_status"], broken["detail"]) == (
            "failed", "the worker could not process this record (JSONDecodeError)")
        assert audit_mismatches(app.db) == []
    finally:
        app.db.close()


def test_a_continuous_worker_rides_out_a_database_unavailable_at_its_start(make_app, database_url, monkeypatch):
    """`worker` without `--once` survives outages; one at its very start (its first cleanup) made
    it exit with "database unavailable" instead of waiting for the database."""
    import workflow_service.worker as worker_module

    real_expire, attempts = worker_module.expire, []

    def unavailable_once(*args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:
            raise DatabaseUnavailable()
        return real_expire(*args, **kwargs)

    monkeypatch.setattr(worker_module, "expire", unavailable_once)
    app = make_app()
    rid = app.post_json("/records", {"source": "s", "category": "c", "payload": {"priority": 9}}).json["id"]
    processed, stop = threading.Event(), threading.Event()

    class Observed(Worker):
        def run_batch(self, actor=None):
            stats = super().run_batch(actor)
            if stats.processed:
                processed.set()
            return stats

    worker = Observed(app.app.db, build_registry(make_settings(database_url)), cleanup_every_seconds=0)
    thread = threading.Thread(target=run_workers, args=(worker,),
                              kwargs={"concurrency": 1, "once": False, "poll_interval": 0.01, "stop": stop})
    thread.start()
    try:
        assert processed.wait(10), "the worker stopped at the unavailable database"
    finally:
        stop.set()
        thread.join(10)
    assert app.get(f"/records/{rid}").json["status"] == "processed" and len(attempts) >= 2


def test_a_database_lost_in_the_middle_of_a_batch_is_an_outage_not_a_failed_batch(make_app, database_url,
                                                                                   dialect, monkeypatch):
    """The database layer turns a lost connection into DatabaseUnavailable, which the worker waits
    out; it must not be taken for a batch that cannot be stored and retried record by record."""
    import sqlite3

    import psycopg

    import workflow_service.worker as worker_module

    app = make_app()
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": [
        {"source": "s", "category": "c", "payload": {"priority": n}} for n in range(3)]}).json["items"]]
    stores = []

    def connection_lost(s, changes):
        stores.append(len(changes))
        raise (sqlite3.OperationalError if dialect == "sqlite" else psycopg.OperationalError)("connection lost")

    monkeypatch.setattr(worker_module, "store_transitions", connection_lost)
    with pytest.raises(DatabaseUnavailable):
        Worker(app.app.db, build_registry(make_settings(database_url))).run_batch()
    assert stores == [3]  # one try for the batch, none record by record
    assert {app.get(f"/records/{rid}").json["status"] for rid in ids} == {"pending"}
