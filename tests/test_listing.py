"""Keyset cursors, CSV export and the summary as CSV, on both databases."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest

SORTS = [(by, order) for by in ("created_at", "status", "category", "source") for order in ("asc", "desc")]


@pytest.fixture
def seeded(app):
    """45 records in 3 batches (so created_at ties inside each), mixed statuses."""
    ids = []
    for b in range(3):
        records = [{"source": f"s{(i + b) % 3}", "category": f"c{i % 4}", "payload": {"i": i, "priority": i % 11}}
                   for i in range(15)]
        ids += [r["id"] for r in app.post_json("/records/batch", {"records": records}).json["items"]]
    for rid in ids[::4]:
        app.post(f"/records/{rid}/process")
    return ids


def walk(app, query: str, limit: int) -> list[dict]:
    items, cursor = [], None
    for _ in range(100):
        page = app.get(f"/records?limit={limit}&{query}" + (f"&cursor={cursor}" if cursor else "")).json
        items += page["items"]
        cursor = page["next_cursor"]
        assert page["count"] == len(page["items"]) <= limit
        if cursor is None:
            return items
    raise AssertionError("cursor walk did not end")


def composed_statements(monkeypatch, db) -> list[tuple[str, dict]]:
    """The name and fragments of every statement composed from now on."""
    composed = []
    real_compose = type(db.queries).compose

    def compose(self, name, **slots):
        composed.append((name, slots))
        return real_compose(self, name, **slots)

    monkeypatch.setattr(type(db.queries), "compose", compose)
    return composed


@pytest.mark.parametrize(("sort_by", "order"), SORTS)
def test_cursor_pages_cover_everything_once_in_order(app, seeded, sort_by, order):
    query = f"sort_by={sort_by}&sort_order={order}"
    walked = walk(app, query, 7)
    expected = app.get(f"/records?limit=200&{query}").json["items"]
    assert [r["id"] for r in walked] == [r["id"] for r in expected]
    assert len(walked) == 45
    keys = [(r[sort_by], r["id"]) for r in walked]
    assert keys == sorted(keys, reverse=order == "desc")


@pytest.mark.parametrize(("sort_by", "order"), [("created_at", "desc"), ("category", "asc"), ("source", "desc")])
def test_cursor_keeps_the_filters(app, seeded, sort_by, order):
    query = f"sort_by={sort_by}&sort_order={order}&status=pending&source=s1"
    walked = walk(app, query, 4)
    expected = app.get(f"/records?limit=200&{query}").json
    assert [r["id"] for r in walked] == [r["id"] for r in expected["items"]]
    assert len(walked) == expected["total"] > 4
    assert all(r["status"] == "pending" and r["source"] == "s1" for r in walked)


def test_next_cursor_is_null_on_the_page_with_the_last_row(app, seeded):
    assert app.get("/records?limit=45").json["next_cursor"] is None
    assert app.get("/records?limit=44").json["next_cursor"] is not None
    assert app.get("/records?limit=5&offset=40").json["next_cursor"] is None
    assert app.get("/records?category=none").json["next_cursor"] is None


@pytest.mark.parametrize(("filters", "offset", "total"), [
    ("", 45, 45), ("status=processed", 1000, None), ("category=none", 0, 0),
    ("created_after=2000-01-01T00:00:00Z", 45, 45), ("created_after=2999-01-01T00:00:00Z", 0, 0)])
def test_a_page_past_the_last_record_still_has_the_total(app, seeded, filters, offset, total):
    """PostgreSQL reads a page and its total in one statement, which gives a row even for an empty
    page. `total` None: some, as many as the whole listing has."""
    everything = app.get(f"/records?limit=200&{filters}").json
    page = app.get(f"/records?offset={offset}&{filters}").json
    assert page["items"] == [] and page["count"] == 0 and page["next_cursor"] is None
    assert page["total"] == everything["total"] == len(everything["items"])
    assert page["total"] == total if total is not None else page["total"] > 0


def test_a_page_and_its_total_come_from_one_snapshot(app, seeded, dialect, monkeypatch):
    """Without a date filter, one statement on PostgreSQL (autocommit: no BEGIN and COMMIT around
    it); otherwise, and on SQLite, the page and its total in one read transaction. Before the
    status and category listing's, the planner's read of that category's counts (a statement of
    its own: it chooses the plan, not the rows)."""
    db = app.app.db
    units = []
    real_unit = type(db)._unit
    monkeypatch.setattr(type(db), "_unit", lambda self, *args: units.append(args) or real_unit(self, *args))
    composed = composed_statements(monkeypatch, db)
    for query in ("", "?status=processed&category=c1", "?created_after=2000-01-01T00:00:00Z&limit=5"):
        assert app.get(f"/records{query}").json["total"] > 0
    if dialect == "postgresql":
        assert units == [(None,), (None,), (None,), ("snapshot",)]
        assert [name for name, _ in composed] == ["list_records_with_total", "status_mix", "list_records_with_total",
                                                  "list_records", "count_records"]
    else:
        assert units == [("read", "begin_read"), ("read", None)] + [("read", "begin_read")] * 2
        assert [name for name, _ in composed] == ["list_records", "count_from_counts", "status_mix", "list_records",
                                                  "count_from_counts", "list_records", "count_records"]


def test_offset_paging_also_offers_a_cursor(app, seeded):
    page = app.get("/records?limit=10&offset=10&sort_order=asc").json
    after = app.get(f"/records?limit=10&sort_order=asc&cursor={page['next_cursor']}").json
    assert [r["id"] for r in after["items"]] == [
        r["id"] for r in app.get("/records?limit=10&offset=20&sort_order=asc").json["items"]]


def bad_cursor(app, query: str, cursor: str):
    resp = app.get(f"/records?{query}&cursor={cursor}", expect_errors=True)
    assert resp.status_int == 422, resp.text
    assert resp.json["error"]["details"][0]["loc"] == ["query", "cursor"]
    return resp.json["error"]["details"][0]["message"]


def test_cursor_for_other_filters_or_sort_is_422(app, seeded):
    cursor = app.get("/records?limit=5&status=pending").json["next_cursor"]
    assert "other filters" in bad_cursor(app, "status=failed", cursor)
    assert "other filters" in bad_cursor(app, "status=pending&sort_order=asc", cursor)
    assert "other filters" in bad_cursor(app, "", cursor)


def forge(payload: dict) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + ".000000000000"


@pytest.mark.parametrize("cursor", [
    "garbage", "a.b", "%00", "x" * 2000, forge({"v": "a", "id": "b", "scope": "c"}), "e30.deadbeefdead",
])
def test_forged_or_malformed_cursor_is_422(app, seeded, cursor):
    bad_cursor(app, "", cursor)


def test_tampered_cursor_is_422(app, seeded):
    cursor = app.get("/records?limit=5").json["next_cursor"]
    body, checksum = cursor.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["v"] = "1999-01-01T00:00:00.000000Z"
    bad_cursor(app, "", forge(data).split(".")[0] + "." + checksum)


def test_cursor_and_offset_together_is_422(app, seeded):
    cursor = app.get("/records?limit=5").json["next_cursor"]
    resp = app.get(f"/records?offset=5&cursor={cursor}", expect_errors=True)
    assert resp.status_int == 422 and resp.json["error"]["details"][0]["loc"] == ["query", "offset"]


def read_csv(resp) -> list[dict]:
    assert resp.content_type == "text/csv"
    return list(csv.DictReader(io.StringIO(resp.text)))


def test_csv_export_streams_every_matching_row(app, seeded):
    rows = read_csv(app.get("/records?format=csv&sort_order=asc"))
    assert len(rows) == 45
    assert list(rows[0]) == ["id", "source", "category", "status", "classification", "score", "error",
                             "attempts", "created_at", "updated_at", "processed_at", "payload", "result"]
    first = app.get(f"/records/{rows[0]['id']}").json
    assert json.loads(rows[0]["payload"]) == first["payload"]
    assert [r["id"] for r in rows] == [r["id"] for r in app.get("/records?limit=200&sort_order=asc").json["items"]]


def test_csv_by_accept_header_and_filters(app, seeded):
    resp = app.get("/records?status=processed&category=c0", headers={"Accept": "text/csv"})
    rows = read_csv(resp)
    assert "attachment" in resp.headers["Content-Disposition"]
    assert rows and all(r["status"] == "processed" and r["category"] == "c0" for r in rows)
    assert len(rows) == app.get("/records?status=processed&category=c0").json["total"]
    assert app.get("/records", headers={"Accept": "application/json, text/csv"}).content_type == "application/json"


def test_csv_quotes_awkward_values(app):
    app.post_json("/records", {"source": 'a,"b"\nc', "category": "=cmd()", "payload": {"t": "x,y\n\"z\""}})
    rows = read_csv(app.get("/records?format=csv"))
    assert rows[0]["source"] == 'a,"b"\nc' and rows[0]["category"] == "=cmd()"
    assert json.loads(rows[0]["payload"]) == {"t": "x,y\n\"z\""}


def test_csv_export_beyond_the_page_limit(app):
    for _ in range(3):
        app.post_json("/records/batch", {"records": [{"source": "s", "category": "c", "payload": {}}] * 100})
    assert len(read_csv(app.get("/records?format=csv"))) == 300


def test_bad_format_is_422(app):
    resp = app.get("/records?format=xml", expect_errors=True)
    assert resp.status_int == 422 and resp.json["error"]["details"][0]["loc"] == ["query", "format"]


def test_summary_as_csv_matches_json(app, seeded):
    report = app.get("/reports/summary?source=s1").json
    rows = read_csv(app.get("/reports/summary?source=s1&format=csv"))
    assert rows[0] == {"group": "total", "name": "all", **{k: str(v) for k, v in report["totals"].items()
                                                           if k != "all"}, "count": str(report["totals"]["all"])}
    by_category = [r for r in rows if r["group"] == "category"]
    assert [(r["name"], int(r["count"])) for r in by_category] == [
        (c["category"], c["count"]) for c in report["by_category"]]
    assert read_csv(app.get("/reports/summary", headers={"Accept": "text/csv"}))[0]["group"] == "total"


@pytest.fixture
def workflow_shaped(app):
    """90 records as a workflow's are: the older 30 processed, the newer 60 pending; a third of
    each in category c1 and source s1."""
    def batch(count: int) -> list[str]:
        records = [{"source": "s1" if i % 3 == 0 else "s2", "category": "c1" if i % 3 == 0 else "c2",
                    "payload": {"i": i, "priority": 1}} for i in range(count)]
        return [r["id"] for r in app.post_json("/records/batch", {"records": records}).json["items"]]

    for rid in batch(30):
        assert app.post(f"/records/{rid}/process").json["status"] == "processed"
    batch(60)




@pytest.mark.parametrize(("query", "led"), [
    ("status=processed&category=c1", True),  # newest first: the category's 20 pending records come first
    ("status=processed&source=s1", True),
    ("status=processed&category=c1&sort_order=asc", False),  # its oldest are the processed ones
    ("status=pending&category=c1", False),
    ("status=processed&category=c1&sort_by=category", False),  # not sorted by time: the status index has no use
])
def test_a_status_and_category_listing_walks_whichever_index_reads_less(app, workflow_shaped, monkeypatch,
                                                                         query, led):
    from workflow_service.records import ListingPlanner

    composed = composed_statements(monkeypatch, app.app.db)
    walked = walk(app, query, 4)
    offset_page = app.get(f"/records?limit=4&offset=5&{query}").json
    assert any("filter.status.led" in slots.get("filters", ()) for _, slots in composed) == led
    monkeypatch.setattr(ListingPlanner, "plan", lambda self, query, filters, order, rows: (filters, order))
    assert [r["id"] for r in walk(app, query, 4)] == [r["id"] for r in walked]
    assert app.get(f"/records?limit=4&offset=5&{query}").json == offset_page
    assert len(walked) == offset_page["total"] == (10 if "processed" in query else 20)


def test_a_status_led_page_leaves_its_dated_count_to_the_database(app, workflow_shaped, monkeypatch):
    """With a date filter the total is a count of the matching rows, which reads them all, from
    whichever index the database estimates smaller; the planner's choice is the page's alone."""
    composed = composed_statements(monkeypatch, app.app.db)
    page = app.get("/records?status=processed&category=c1&limit=4&created_after=2000-01-01").json
    assert page["total"] == 10 and page["count"] == 4
    assert [slots.get("filters") for _, slots in composed] == [("filter.category",),  # the planner's counts
                    ("filter.status.led", "filter.category.beside_status", "filter.created_from"),
                    ("filter.status", "filter.category", "filter.created_from")]


def test_the_planner_reads_a_categorys_counts_at_most_every_few_seconds(app, workflow_shaped, monkeypatch):
    from workflow_service.records import ListingPlanner

    reads = []
    real_read = type(app.app.db).read

    def read(self, *args, **kwargs):
        reads.append(args)
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(type(app.app.db), "read", read)
    for _ in range(3):
        app.get("/records?status=processed&category=c1")
    assert len(reads) == 1 + 3  # the counts once, then a page each
    monkeypatch.setattr(ListingPlanner, "MIX_SECONDS", 0.0)
    app.get("/records?status=processed&category=c1")
    assert len(reads) == 4 + 2
    planner = ListingPlanner(app.app.db)
    assert planner.mix("category", "c1") == {"processed": (10, 30), "pending": (20, 60)}
    assert planner.mix("source", "s2") == {"processed": (20, 30), "pending": (40, 60)}
    assert planner.mix("source", "none") == {"processed": (0, 30), "pending": (0, 60)}


def test_an_outage_while_reading_the_counts_is_a_503_and_is_not_remembered(app, workflow_shaped, monkeypatch):
    from workflow_service.errors import DatabaseUnavailable

    real_read, calls = type(app.app.db).read, []

    def read_fails_first(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # the planner's counts
            raise DatabaseUnavailable()
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(type(app.app.db), "read", read_fails_first)
    down = app.get("/records?status=processed&category=c1&limit=4", status=503)
    assert down.json["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert "Traceback" not in down.text and "SELECT" not in down.text.upper()
    page = app.get("/records?status=processed&category=c1&limit=4").json
    assert len(calls) == 1 + 2  # the counts read again, not an empty mix from the failed read
    assert page["total"] == 10 and page["count"] == 4
    assert all(r["status"] == "processed" and r["category"] == "c1" for r in page["items"])


@pytest.mark.parametrize(("status", "descending", "led"), [
    ("processed", True, True),  # 500 pending records of the category come before its first processed one
    ("processed", False, False),
    ("pending", False, True),  # 1,000 finished ones come before its first pending one
    ("pending", True, False),
    ("failed", True, True),
])
def test_walks_estimates_both_walks_from_the_counts(status, descending, led):
    from workflow_service.listing import walks

    mix = {"pending": (500, 5000), "processed": (900, 9000), "failed": (100, 1000)}  # a tenth in the category
    by_status, by_category = walks(mix, status, descending, 51)
    assert by_status == 510  # 51 matches at one in ten
    assert (by_status < by_category) == led


def test_walks_of_a_rare_category_stay_on_the_category():
    from workflow_service.listing import walks

    mix = {"pending": (0, 5000), "processed": (3, 9000), "failed": (0, 1000)}
    assert walks(mix, "processed", True, 51) == (9000, 3)  # every processed record, or the category's three
    assert walks({}, "processed", True, 51) == (0, 0)  # no counts yet: nothing to walk either way
