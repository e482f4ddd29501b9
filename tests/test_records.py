"""Records: create, fetch, list with filters, sorts and paging, process."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from workflow_service import records

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_create_returns_the_record_with_location(app):
    resp = app.post_json("/records", {"source": "api", "category": "invoice", "payload": {"priority": 9, "ü": "ñ"}})
    assert resp.status_int == 201
    record = resp.json
    assert resp.headers["Location"] == f"/records/{record['id']}"
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", record["id"])
    assert record["status"] == "pending"
    assert record["payload"] == {"priority": 9, "ü": "ñ"}
    assert record["attempts"] == 0
    assert record["result"] is record["classification"] is record["score"] is record["error"] is None
    assert record["processed_at"] is None
    assert RFC3339.match(record["created_at"]) and record["created_at"] == record["updated_at"]


def test_record_ids_are_uuid4_led_by_the_time_in_milliseconds(monkeypatch):
    clock = iter([1_700_000_000_123_000_000, 1_700_000_000_123_999_999, 1_700_000_000_124_000_000])
    monkeypatch.setattr(records.time, "time_ns", lambda: next(clock))
    first, same_ms, next_ms = (records.new_record_ids(1)[0] for _ in range(3))
    for rid in (first, same_ms, next_ms):
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert first.replace("-", "")[:12] == same_ms.replace("-", "")[:12] == f"{1_700_000_000_123:012x}"
    assert next_ms.replace("-", "")[:12] == f"{1_700_000_000_124:012x}"
    assert max(first, same_ms) < next_ms


def test_record_ids_keep_74_random_bits(monkeypatch):
    monkeypatch.setattr(records.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    ids = set(records.new_record_ids(20_000))
    assert len(ids) == 20_000
    any_one, all_one = 0, (1 << 128) - 1
    for rid in ids:
        any_one |= uuid.UUID(rid).int
        all_one &= uuid.UUID(rid).int
    varying = any_one & ~all_one
    fixed = {bit for bit in range(128) if not varying >> bit & 1}
    assert fixed == set(range(80, 128)) | {76, 77, 78, 79, 62, 63}  # the time, the version, the variant


def test_record_json_is_json_dumps_of_the_record():
    now = "2026-11-26T01:00:00.000000Z"
    tricky = 'ü"\\\n\u2028\x00é😀\t'
    row = {"id": "y", "source": tricky, "category": "c", "payload": '{"a": [1, 2.5, null]}', "status": "failed",
           "result": '{"x": "ü"}', "classification": None, "score": 9, "error": tricky, "attempts": 10**20,
           "created_at": now, "updated_at": now, "processed_at": None}
    expected = dict(row, payload={"a": [1, 2.5, None]}, result={"x": "ü"}, score=9.0)
    assert records.record_json(row) == json.dumps(expected, ensure_ascii=False)


@pytest.mark.parametrize("score", [0.1, 0.30000000000000004, 1e-7, 1e22, -0.0, 7, 10**20, 2.5e-320, float("inf")])
def test_record_json_writes_a_score_as_json_dumps_writes_the_float(score):
    row = dict.fromkeys(records.RECORD_COLUMNS, "x") | {"payload": "{}", "result": None, "attempts": 1,
                                                       "score": score}
    assert f'"score": {json.dumps(float(score))}, ' in records.record_json(row)


def test_record_json_renders_a_tuple_in_column_order_as_it_renders_the_dict():
    now = "2026-11-26T01:00:00.000000Z"
    row = {"id": "y", "source": 's"', "category": "c", "payload": "[]", "status": "processed", "result": "{}",
           "classification": "high", "score": 0.30000000000000004, "error": None, "attempts": 1,
           "created_at": now, "updated_at": now, "processed_at": now}
    assert list(row) == list(records.RECORD_COLUMNS)
    assert records.record_json(tuple(row.values())) == records.record_json(row)


def test_record_columns_are_the_order_of_the_sql_fragment(database_url, create_record):
    """The listing and get by id read rows as tuples in `record_columns` order (Session.tuples)."""
    from conftest import listing_sql, make_settings

    from workflow_service.db import open_database

    created = create_record(payload={"n": 1})
    db = open_database(make_settings(database_url))
    try:
        with db.read() as s:
            as_dict = s.one("get_record", {"id": created["id"]})
            as_tuples = s.tuples("get_record", {"id": created["id"]})
            page_sql = listing_sql(s.queries, ("filter.category",), "order.created_at.asc")
            page = s.tuples_sql(page_sql, {"category": "invoice", "limit": 5, "offset": 0})
            page_dicts = s.all_sql(page_sql, {"category": "invoice", "limit": 5, "offset": 0})
    finally:
        db.close()
    assert tuple(as_dict) == records.RECORD_COLUMNS
    assert as_tuples == [tuple(as_dict.values())]
    assert page == [tuple(row.values()) for row in page_dicts] and len(page) == 1
    assert tuple(page_dicts[0])[:13] == records.RECORD_COLUMNS  # PostgreSQL's page has its total last
    assert json.loads(records.record_json(as_tuples[0])) == created


def test_a_new_record_renders_as_record_json_renders_it_stored():
    now = "2026-11-26T01:00:00.000000Z"
    tricky = 'ü"\\\n\u2028\x00é😀\t'
    payload = {"a": [1, 2.5, None, True, 10**30, -0.0, 1e-7], tricky: {"": tricky}}
    rows = records.new_rows([{"source": tricky, "category": "c", "payload": payload},
                             {"source": "s", "category": tricky, "payload": {}}])
    assert [json.loads(r["payload"]) for r in rows] == [payload, {}]
    assert rows[0]["payload"] == json.dumps(payload, ensure_ascii=False)
    stored = [dict(r, status="pending", result=None, classification=None, score=None, error=None, attempts=0,
                   created_at=now, updated_at=now, processed_at=None) for r in rows]
    assert list(records.new_records_json(rows, now)) == [records.record_json(row) for row in stored]


def test_get_returns_what_create_stored(app, create_record):
    created = create_record(payload={"nested": {"list": [1, 2.5, "x", None, True]}, "big": 10**30})
    fetched = app.get(f"/records/{created['id']}").json
    assert fetched == created


def test_get_accepts_uppercase_id(app, create_record):
    created = create_record()
    assert app.get(f"/records/{created['id'].upper()}").json["id"] == created["id"]


@pytest.mark.parametrize("record_id", ["nope", "00000000-0000-4000-8000-000000000000", "1' OR '1'='1", "x" * 300])
def test_unknown_or_malformed_id_is_404(app, record_id):
    resp = app.get(f"/records/{record_id}", expect_errors=True)
    assert resp.status_int == 404
    assert resp.json["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("priority", "status", "score", "classification"),
    [
        (9, "processed", 9.0, "high"),
        (8, "processed", 8.0, "high"),
        ("4", "processed", 4.0, "medium"),
        (3.5, "processed", 3.5, "low"),
        (None, "failed", None, None),
        (True, "failed", None, None),
        ("high", "failed", None, None),
        ("Infinity", "failed", None, None),
        (10**400, "failed", None, None),
    ],
)
def test_process_applies_the_builtin_rule(app, create_record, priority, status, score, classification):
    record = create_record(payload={"priority": priority})
    processed = app.post(f"/records/{record['id']}/process").json
    assert processed["status"] == status
    assert processed["score"] == score
    assert processed["classification"] == classification
    assert processed["attempts"] == 1
    assert RFC3339.match(processed["processed_at"])
    if status == "failed":
        assert processed["error"] == "invalid priority"
        assert processed["result"] is None
    else:
        assert processed["result"] == {"score": score, "classification": classification}
        assert processed["error"] is None


def test_process_without_priority_scores_zero(app, create_record):
    record = create_record(payload={})
    processed = app.post(f"/records/{record['id']}/process").json
    assert (processed["status"], processed["score"], processed["classification"]) == ("processed", 0.0, "low")


def test_process_twice_is_409_with_current_status(app, create_record):
    record = create_record(payload={"priority": "bad"})
    app.post(f"/records/{record['id']}/process")
    resp = app.post(f"/records/{record['id']}/process", expect_errors=True)
    assert resp.status_int == 409
    assert resp.json["error"]["code"] == "CONFLICT"
    assert resp.json["error"]["details"] == {"status": "failed"}
    assert app.get(f"/records/{record['id']}").json["attempts"] == 1


def test_process_unknown_record_is_404(app):
    resp = app.post("/records/00000000-0000-4000-8000-000000000000/process", expect_errors=True)
    assert resp.status_int == 404


def test_events_record_creation_and_transition(app, create_record):
    record = create_record(payload={"priority": 1}, headers={"X-Request-ID": "create-1"})
    app.post(f"/records/{record['id']}/process", headers={"X-Request-ID": "process-1"})
    events = app.get(f"/records/{record['id']}/events").json["items"]
    assert [(e["from_status"], e["to_status"], e["request_id"]) for e in events] == [
        (None, "pending", "create-1"),
        ("pending", "processed", "process-1"),
    ]
    assert all(e["record_id"] == record["id"] and RFC3339.match(e["at"]) for e in events)


def _seed(create_record, tag):
    """Six records with known sources, categories and statuses, unique to this test."""
    made = []
    for i, (source, category) in enumerate(
        [("a", "x"), ("b", "y"), ("a", "y"), ("c", "x"), ("b", "x"), ("a", "z")]
    ):
        made.append(create_record(source=f"{tag}-{source}", category=f"{tag}-{category}", payload={"n": i}))
    return made


def test_list_defaults_newest_first(app, create_record):
    made = _seed(create_record, "dflt")
    page = app.get("/records").json
    assert page["limit"] == 50 and page["offset"] == 0 and page["next_cursor"] is None
    assert page["total"] == 6 and page["count"] == 6
    assert [r["id"] for r in page["items"]] == [r["id"] for r in reversed(made)]


@pytest.mark.parametrize("sort_by", ["created_at", "status", "category", "source"])
@pytest.mark.parametrize("sort_order", ["asc", "desc"])
def test_list_sorts_with_ties_broken_by_id(app, create_record, sort_by, sort_order):
    made = _seed(create_record, "sort")
    app.post(f"/records/{made[1]['id']}/process")
    app.post(f"/records/{made[4]['id']}/process")
    rows = app.get(f"/records?sort_by={sort_by}&sort_order={sort_order}").json["items"]
    expected = sorted(rows, key=lambda r: (r[sort_by], r["id"]), reverse=sort_order == "desc")
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert len(rows) == 6


def test_list_filters(app, create_record):
    made = _seed(create_record, "flt")
    app.post(f"/records/{made[0]['id']}/process")
    get = lambda qs: {r["id"] for r in app.get("/records?" + qs).json["items"]}  # noqa: E731
    ids = [r["id"] for r in made]
    assert get("source=flt-a") == {ids[0], ids[2], ids[5]}
    assert get("category=flt-x") == {ids[0], ids[3], ids[4]}
    assert get("status=processed") == {ids[0]}
    assert get("status=pending&category=flt-x&source=flt-b") == {ids[4]}
    assert get("category=nothing-here") == set()


def test_list_created_bounds_are_inclusive(app, create_record):
    made = _seed(create_record, "rng")
    stamps = [r["created_at"] for r in made]
    get = lambda qs: [r["id"] for r in app.get("/records?sort_order=asc&" + qs).json["items"]]  # noqa: E731
    assert get(f"created_after={stamps[2]}&created_before={stamps[4]}") == [r["id"] for r in made[2:5]]
    day = stamps[0][:10]
    assert len(get(f"created_after={day}&created_before={day}")) == 6 or stamps[-1][:10] != day
    assert get("created_before=2000-01-01") == []
    assert len(get("created_after=2000-01-01T00:00:00+05:00")) == 6


def test_list_offset_limit_and_clamp(app, create_record):
    made = _seed(create_record, "page")
    first = app.get("/records?limit=4&sort_order=asc").json
    second = app.get("/records?limit=4&offset=4&sort_order=asc").json
    assert first["count"] == 4 and second["count"] == 2 and first["total"] == second["total"] == 6
    assert [r["id"] for r in first["items"] + second["items"]] == [r["id"] for r in made]
    assert app.get("/records?limit=100000").json["limit"] == 200


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("offset=-5", "offset"),
        ("status=done", "status"),
        ("sort_by=payload", "sort_by"),
        ("sort_order=up", "sort_order"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2024-02-30", "created_before"),
        ("category=%00", "category"),
    ],
)
def test_list_rejects_bad_query_values(app, query, loc):
    resp = app.get("/records?" + query, expect_errors=True)
    assert resp.status_int == 422
    assert resp.json["error"]["code"] == "VALIDATION_ERROR"
    assert ["query", loc] in [d["loc"] for d in resp.json["error"]["details"]]


def test_list_reports_every_bad_query_value(app):
    resp = app.get("/records?limit=x&offset=y&status=z", expect_errors=True)
    assert sorted(d["loc"][1] for d in resp.json["error"]["details"]) == ["limit", "offset", "status"]


def test_list_trailing_slash_and_unknown_params(app, create_record):
    create_record()
    assert app.get("/records/?unknown=1").json["total"] == 1


def test_batches_past_their_turns_wait_then_get_a_503(make_app):
    app = make_app(DB_TIMEOUT_SECONDS="0.2")
    batches = app.app._router.find("/records/batch")[0]
    body = {"records": [{"source": "s", "category": "c", "payload": {}}] * 2}
    for _ in range(batches.AT_ONCE):  # as if that many batches were being written
        batches._slots.acquire()
    try:
        busy = app.post_json("/records/batch", body, status=503)
        assert busy.json["error"] == {"code": "SERVICE_UNAVAILABLE", "details": None,
                                      "message": "too many batches in progress, try again later"}
        app.post_json("/records", body["records"][0], status=201)  # single creates take no turn
    finally:
        batches._slots.release()
    assert app.post_json("/records/batch", body, status=201).json["count"] == 2
    batches._slots.release()
    assert app.get("/records").json["total"] == 3  # the refused batch stored nothing
