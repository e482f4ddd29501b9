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
