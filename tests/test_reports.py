"""The summary report: totals, by category, by source, filters."""

from __future__ import annotations

import pytest


def seed(app, create_record):
    plan = [("s1", "c1", 9), ("s1", "c1", "bad"), ("s2", "c1", None), ("s2", "c2", 1), ("s1", "c2", 5)]
    made = []
    for source, category, priority in plan:
        payload = {} if priority is None else {"priority": priority}
        made.append(create_record(source=source, category=category, payload=payload))
    app.post(f"/records/{made[0]['id']}/process")  # processed
    app.post(f"/records/{made[1]['id']}/process")  # failed
    app.post(f"/records/{made[3]['id']}/process")  # processed
    return made


def test_summary_counts_everything_exactly(app, create_record):
    seed(app, create_record)
    body = app.get("/reports/summary").json
    assert body["totals"] == {"all": 5, "pending": 2, "processed": 2, "failed": 1}
    assert body["by_category"] == [
        {"category": "c1", "count": 3, "pending": 1, "processed": 1, "failed": 1},
        {"category": "c2", "count": 2, "pending": 1, "processed": 1, "failed": 0},
    ]
    assert body["by_source"] == [
        {"source": "s1", "count": 3, "pending": 1, "processed": 1, "failed": 1},
        {"source": "s2", "count": 2, "pending": 1, "processed": 1, "failed": 0},
    ]
    assert body["generated_at"].endswith("Z")
    assert body["filters"] == dict.fromkeys(["status", "category", "source", "date_from", "date_to"])


def test_summary_of_an_empty_database(app):
    body = app.get("/reports/summary").json
    assert body["totals"] == {"all": 0, "pending": 0, "processed": 0, "failed": 0}
    assert body["by_category"] == [] and body["by_source"] == []


@pytest.mark.parametrize(
    ("query", "totals"),
    [
        ("status=pending", {"all": 2, "pending": 2, "processed": 0, "failed": 0}),
        ("category=c2", {"all": 2, "pending": 1, "processed": 1, "failed": 0}),
        ("source=s1&category=c1", {"all": 2, "pending": 0, "processed": 1, "failed": 1}),
        ("date_from=2000-01-01&date_to=2999-12-31", {"all": 5, "pending": 2, "processed": 2, "failed": 1}),
        ("date_to=2000-01-01", {"all": 0, "pending": 0, "processed": 0, "failed": 0}),
    ],
)
def test_summary_filters(app, create_record, query, totals):
    seed(app, create_record)
    assert app.get("/reports/summary?" + query).json["totals"] == totals


def test_summary_date_bounds_are_inclusive(app, create_record):
    made = seed(app, create_record)
    first, last = made[0]["created_at"], made[-1]["created_at"]
    body = app.get(f"/reports/summary?date_from={first}&date_to={last}").json
    assert body["totals"]["all"] == 5
    assert body["filters"]["date_from"] == first and body["filters"]["date_to"] == last
    today = first[:10]
    if last[:10] == today:
        assert app.get(f"/reports/summary?date_from={today}&date_to={today}").json["totals"]["all"] == 5


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("date_from=2024-02-01&date_to=2024-01-01", "date_from"),
        ("date_from=garbage", "date_from"),
        ("date_to=2024-01-01T99:00", "date_to"),
        ("status=unknown", "status"),
    ],
)
def test_summary_rejects_bad_filters(app, query, loc):
    resp = app.get("/reports/summary?" + query, expect_errors=True)
    assert resp.status_int == 422
    assert resp.json["error"]["code"] == "VALIDATION_ERROR"
    assert ["query", loc] in [d["loc"] for d in resp.json["error"]["details"]]


def test_folding_the_counts_changes_no_total(make_app, database_url, dialect):
    """Writes through several connections (on PostgreSQL, several counter shards), then the
    worker's cleanup folds the shards: every total stays, one row per combination is left, and
    a combination whose count went to zero is gone."""
    from conftest import audit_mismatches, make_settings
    from webtest import TestApp

    from workflow import build_registry, create_app
    from workflow_service.db import open_database
    from workflow_service.worker import Worker

    app = make_app()
    ids = []
    for n in range(4):  # each app its own database connection: on PostgreSQL its own backend's shard
        other = create_app(make_settings(database_url), db=open_database(make_settings(database_url)))
        try:
            batch = {"records": [{"source": f"s{i % 2}", "category": f"c{n % 2}", "payload": {"priority": i}}
                                 for i in range(6)]}
            ids += [r["id"] for r in TestApp(other).post_json("/records/batch", batch).json["items"]]
        finally:
            other.db.close()
    for rid in ids[:6] + ids[12:18]:  # every c0 record moves on: its pending counts are zero now
        app.post(f"/records/{rid}/process")
    before = app.get("/reports/summary").json
    with app.app.db.read() as s:
        shards = {row["shard"] for row in s.all_sql("SELECT shard FROM record_counts")}
    if dialect == "postgresql":
        assert len(shards) > 1  # 4 or 5 backends, 16 shards: all on one would be 1 in 16**4
    Worker(app.app.db, build_registry(make_settings(database_url))).cleanup(force=True)
    after = app.get("/reports/summary").json
    assert {k: v for k, v in after.items() if k != "generated_at"} == {
        k: v for k, v in before.items() if k != "generated_at"}
    with app.app.db.read() as s:
        rows = s.all_sql("SELECT category, source, status, shard, n FROM record_counts")
    assert all(row["n"] > 0 for row in rows) or dialect == "sqlite"
    assert len({(r["category"], r["source"], r["status"]) for r in rows}) == len(rows)
    assert {row["shard"] for row in rows} == {0}
    assert audit_mismatches(app.app.db) == []
    assert app.get("/records?category=c0&status=pending").json["total"] == 0
