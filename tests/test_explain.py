"""Every listing filter and sort, every report and the worker's claim are served by an index.

SQLite: `EXPLAIN QUERY PLAN` must show no plain `SCAN records` (a full table
scan); sorts without filters must also need no temporary B-tree. PostgreSQL:
with sequential scans discouraged (`enable_seqscan = off`, so the planner's
choice does not depend on the table's size), the plan must contain no
`Seq Scan` on records: an index exists that can serve the query.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from conftest import listing_sql, make_settings, new_pg_schema
from webtest import TestApp

from workflow import build_registry, create_app
from workflow_service.migrations import Migrator
from workflow_service.worker import Worker

STAMP = "2030-01-01T00:00:00.000000Z"
ID = "00000000-0000-4000-8000-000000000000"
PARAMS = {"status": "pending", "category": "c", "source": "s", "created_from": STAMP, "created_to": STAMP,
          "processed_from": STAMP, "processed_to": STAMP, "cursor_value": STAMP, "cursor_id": ID,
          "limit": 51, "offset": 0, "now": STAMP, "id": ID}
SORTS = [(by, order) for by in ("created_at", "status", "category", "source") for order in ("asc", "desc")]

LISTINGS = (
    [((), f"order.{by}.{o}") for by, o in SORTS]
    + [((f"filter.{f}",), "order.created_at.desc") for f in ("status", "category", "source")]
    + [((f"filter.{f}",), f"order.{f}.asc") for f in ("status", "category", "source")]
    + [(("filter.created_from", "filter.created_to"), "order.created_at.desc")]
    + [(("filter.status", "filter.category"), "order.created_at.desc")]
    + [((f"after.{by}.{o}",), f"order.{by}.{o}") for by, o in SORTS]
    + [(("filter.status", "after.created_at.desc"), "order.created_at.desc")]
)


@pytest.fixture(scope="module")
def db(database_url):
    app = create_app(make_settings(database_url))
    yield app.db
    app.db.close()


def plan(db, sql: str, params: dict) -> list[str] | dict:
    if db.dialect == "sqlite":
        with db.read() as s:
            return [row["detail"] for row in s.all_sql("EXPLAIN QUERY PLAN " + sql, params)]
    with db.write() as s:
        s.one_sql("SELECT set_config('enable_seqscan', 'off', true)")
        return s.one_sql("EXPLAIN (FORMAT JSON) " + sql, params)["QUERY PLAN"][0]["Plan"]


def plan_nodes(node: dict) -> list[dict]:
    """A PostgreSQL plan node and every node below it."""
    nodes, stack = [], [node]
    while stack:
        nodes.append(stack.pop())
        stack.extend(nodes[-1].get("Plans", []))
    return nodes


def full_scans(db, result) -> list[str]:
    if db.dialect == "sqlite":
        return [line for line in result if line.startswith("SCAN records") and "USING" not in line]
    return [json.dumps(node)[:200] for node in plan_nodes(result)
            if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == "records"]


@pytest.mark.parametrize(("filters", "order"), LISTINGS, ids=lambda v: ",".join(v) if isinstance(v, tuple) else v)
def test_listing_uses_an_index(db, filters, order):
    sql = listing_sql(db.queries, filters, order)
    result = plan(db, sql, PARAMS)
    assert not full_scans(db, result), result
    if db.dialect == "sqlite" and not [f for f in filters if f.startswith("filter.")]:
        assert not any("TEMP B-TREE" in line for line in result), result


@pytest.mark.parametrize("filters", [(), ("filter.status",), ("filter.category",), ("filter.source",)])
def test_count_uses_an_index(db, filters):
    assert not full_scans(db, plan(db, db.queries.compose("count_records", filters=filters), PARAMS))


@pytest.mark.parametrize("filters", [(), ("filter.status",), ("filter.category", "filter.created_from")])
def test_summary_uses_indexes(db, filters):
    assert not full_scans(db, plan(db, db.queries.compose("summary_counts", filters=filters), PARAMS))


def test_timeseries_uses_indexes(db):
    created = db.queries.compose("timeseries_created", filters=("filter.created_from", "filter.created_to"))
    finished = db.queries.compose("timeseries_finished", filters=("filter.processed_from", "filter.processed_to"))
    params = dict(PARAMS, bucket="hour", buckets=json.dumps([[STAMP, None]]))
    for sql in (created, finished):
        assert not full_scans(db, plan(db, sql, params))
    if db.dialect == "sqlite":  # each bucket and status from a range of an index alone, and nothing sorted
        assert any("COVERING INDEX ix_records_status_created (status=? AND created_at>? AND created_at<?)" in line
                   for line in plan(db, created, params))
        assert any("COVERING INDEX ix_records_finished (status=? AND processed_at>? AND processed_at<?)" in line
                   for line in plan(db, finished, params))
        assert not [line for line in plan(db, created, params) + plan(db, finished, params) if "TEMP B-TREE" in line]


@pytest.mark.parametrize("name", ["latest_failures", "claim_pending", "get_record"])
def test_point_queries_use_indexes(db, name):
    assert not full_scans(db, plan(db, db.queries[name], PARAMS))


def test_postgresql_claims_walk_the_queue_index_after_statistics_of_an_empty_queue(pg_server_url, monkeypatch):
    """Autovacuum analyzes `records` after a drain, when no record is pending: the statistics then
    estimate one pending record, and in some such states PostgreSQL chose to read every pending
    record through (status, id) and sort them (docs/engine.md, "The claim's plan"). The worker's
    claim is planned without a sort, in whatever state the statistics are."""
    settings = make_settings(new_pg_schema(pg_server_url))
    app = TestApp(create_app(settings))
    db = app.app.db
    Migrator(db).up()

    def create(count: int) -> None:
        for _ in range(count // 1000):
            app.post_json("/records/batch", {"records": [
                {"source": "s", "category": f"c{i % 10}", "payload": {"priority": 1 if i % 20 else "urgent"}}
                for i in range(1000)]})

    create(5000)
    worker = Worker(db, build_registry(settings), batch_size=1000)
    for _ in range(10):
        if not worker.run_batch().claimed:
            break
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE records")
    create(3000)

    explain = "EXPLAIN (FORMAT JSON) " + db.queries["claim_pending"]
    monkeypatch.setitem(db.queries._statements, "explain_claim", explain)
    with db.write() as s:
        [row] = s.all_between("claim_pending_plan", "explain_claim", PARAMS, "claim_pending_plan_end")
    nodes = plan_nodes(row["QUERY PLAN"][0]["Plan"])
    assert not [n for n in nodes if n["Node Type"] == "Sort"], nodes
    assert "ix_records_pending_queue" in {n.get("Index Name") for n in nodes}, nodes
    assert worker.run_batch().claimed == 1000  # the worker's own claim, through all_between

    # The setting holds for the claim alone: the batch's other statements plan as usual.
    monkeypatch.setitem(db.queries._statements, "sorting", "SELECT current_setting('enable_sort') AS sorting")
    with db.write() as s:
        assert s.all_between("claim_pending_plan", "sorting", {}, "claim_pending_plan_end") == [{"sorting": "off"}]
        assert s.one("sorting") == {"sorting": "on"}
    db.close()


@pytest.mark.parametrize("after", [(), ("after.created_at.desc",)], ids=["first page", "cursor"])
@pytest.mark.parametrize("beside", ["filter.category.beside_status", "filter.source.beside_status"])
def test_a_status_led_listing_walks_the_status_index_in_order(db, beside, after):
    """records.ListingPlanner's fragments: (status, created_at, id) gives the rows in order, from
    the cursor on; the category or source is checked row by row."""
    sql = listing_sql(db.queries, ("filter.status.led", beside, *after), "order.created_at.desc.status_led")
    result = plan(db, sql, PARAMS)
    if db.dialect == "sqlite":
        assert any("USING INDEX ix_records_status_created" in line for line in result), result
        assert not any("TEMP B-TREE" in line for line in result), result
        return
    [page] = [n for n in plan_nodes(result) if n["Node Type"] == "Limit"]  # the page's ids, before the join sorts them
    assert "ix_records_status_created" in {n.get("Index Name") for n in plan_nodes(page)}, result
    assert not [n for n in plan_nodes(page) if "Sort" in n["Node Type"]], result
