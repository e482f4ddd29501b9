"""Reports: the summary and the time series, as JSON resources and as functions the dashboard reuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise

from .db import Database
from .errors import ValidationFailed, problem
from .listing import FILTERS, csv_lines, filter_fragments, has_date_filter, is_date_filter, wants_csv
from .states import STATUSES
from .timeutil import from_text, to_text, utc_now_text
from .validation import parse_query

MAX_BUCKETS = 10_000
BUCKET_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_SPAN = {"hour": timedelta(hours=23), "day": timedelta(days=29)}
SUMMARY_FILTERS = (*FILTERS, "date_from", "date_to")


def _group(rows: list[tuple]) -> dict[str, list[dict]]:
    """(dimension, key, status, n) rows as each dimension's entries, sorted by key, empty ones left out."""
    groups: dict[str, dict[str, dict]] = {"category": {}, "source": {}}
    for dimension, key, status, n in rows:
        entries = groups[dimension]
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = {dimension: key, "count": 0, **dict.fromkeys(STATUSES, 0)}
        entry["count"] += n
        entry[status] += n
    return {dimension: [entries[key] for key in sorted(entries) if entries[key]["count"]]
            for dimension, entries in groups.items()}


def check_range(query: dict) -> None:
    """SPEC: `date_from` after `date_to` is a 422."""
    if query.get("date_from") and query.get("date_to") and query["date_from"] > query["date_to"]:
        raise ValidationFailed(details=[problem(["query", "date_from"], "must not be after date_to")])


def summary(db: Database, query: dict, now: Callable[[], str] = utc_now_text) -> dict:
    """Totals, by category and by source, from one statement (so one snapshot).

    Without a date filter the maintained counts answer (a few rows, whatever the
    size of the table); with one, the records themselves are grouped.
    """
    check_range(query)
    filters, params = filter_fragments(query, "date_from", "date_to")
    counted = "summary_counts" if has_date_filter(filters) else "summary_from_counts"
    with db.read() as s:
        rows = s.tuples_sql(s.queries.compose(counted, filters=filters), params)
    grouped = _group(rows)
    by_category = grouped["category"]
    totals = {"all": sum(c["count"] for c in by_category)}
    totals.update({status: sum(c[status] for c in by_category) for status in STATUSES})
    return {
        "generated_at": now(),
        "filters": {name: query.get(name) for name in SUMMARY_FILTERS},
        "totals": totals,
        "by_category": by_category,
        "by_source": grouped["source"],
    }


FOLD_COUNTS = "fold_counts"  # a dialect whose SQL has it keeps its counts in shards (PostgreSQL)


def fold_counts(db: Database) -> int:
    """Fold the maintained counts' shards into one row per combination (docs/reports.md); return
    how many combinations were folded. Writers of counts wait for it, a millisecond or so.
    DatabaseUnavailable when a shard's lock was not free within a second."""
    if FOLD_COUNTS not in db.queries:
        return 0
    with db.write() as s:
        s.run("fold_lock_timeout")
        s.all("lock_count_shards")
        folded = s.run(FOLD_COUNTS)
        s.run("drop_empty_counts")
    return folded


def bucket_start(moment: datetime, bucket: str) -> datetime:
    """The start of the hour or day bucket that holds `moment`."""
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def timeseries(db: Database, query: dict, now: Callable[[], str] = utc_now_text) -> dict:
    """Dense per-bucket counts and latencies between `date_from` and `date_to` (UTC)."""
    check_range(query)
    bucket = query["bucket"]
    end = from_text(query["date_to"]) if query.get("date_to") else from_text(now())
    if query.get("date_from"):
        start = from_text(query["date_from"])
    else:
        try:
            start = bucket_start(end, bucket) - DEFAULT_SPAN[bucket]
        except OverflowError:  # a date_to in the first day of year 1
            start = datetime.min
    first, last = bucket_start(start, bucket), bucket_start(end, bucket)
    count = (last - first) // BUCKET_STEP[bucket] + 1
    if count > MAX_BUCKETS:
        raise ValidationFailed(details=[problem(["query", "date_from"],
                                                f"the range holds {count} {bucket} buckets; at most {MAX_BUCKETS}")])
    lower, upper = to_text(start), to_text(end)
    created_filters, params = filter_fragments(dict(query, date_from=lower, date_to=upper), "date_from", "date_to")
    finished_filters = tuple(f for f in created_filters if not is_date_filter(f)) + (
        "filter.processed_from", "filter.processed_to")
    starts = [to_text(first + i * BUCKET_STEP[bucket]) for i in range(count)]
    # SQLite counts each bucket on its own range, from `buckets`: [start, end) pairs, the last
    # one's end null (the filters bound it at `upper`; a bucket in year 9999 has no next start).
    # PostgreSQL groups by the `bucket` unit.
    buckets = json.dumps(list(pairwise([*starts, None])))
    params.update(processed_from=lower, processed_to=upper, bucket=bucket, buckets=buckets)
    with db.read(snapshot=True) as s:
        created = s.all_sql(s.queries.compose("timeseries_created", filters=created_filters), params)
        finished = s.all_sql(s.queries.compose("timeseries_finished", filters=finished_filters), params)
    items = {}
    for key in starts:
        items[key] = {"start": key, "created": 0, **dict.fromkeys(STATUSES, 0), "became_processed": 0,
                      "became_failed": 0, "latency_p50_ms": None, "latency_p95_ms": None,
                      "latency_avg_ms": None, "latency_max_ms": None}
    for row in created:
        item = items[row["start"]]
        item[row["status"]] += row["n"]
        item["created"] += row["n"]
    for row in finished:
        item = items[row["start"]]
        item[f"became_{row['status']}"] += row["n"]
        if row["status"] == "processed":  # latency of successful processing
            for name in ("latency_p50_ms", "latency_p95_ms", "latency_avg_ms", "latency_max_ms"):
                item[name] = None if row[name] is None else round(float(row[name]), 3)
    return {"bucket": bucket, "date_from": lower, "date_to": upper,
            "filters": {name: query.get(name) for name in FILTERS},
            "items": list(items.values())}


class Summary:
    """`GET /reports/summary` (JSON, or CSV with `format=csv` / `Accept: text/csv`)."""

    def __init__(self, db: Database, now: Callable[[], str] = utc_now_text):
        self.db, self.now = db, now

    def on_get(self, req, resp):
        query = parse_query(req, "queries/summary.json")
        report = summary(self.db, query, self.now)
        if not wants_csv(req, query):
            resp.media = report
            return
        rows = [{"group": "total", "name": "all", "count": report["totals"]["all"],
                 **{s: report["totals"][s] for s in STATUSES}}]
        for dimension in ("category", "source"):
            rows += [{"group": dimension, "name": e[dimension], **{k: e[k] for k in ("count", *STATUSES)}}
                     for e in report[f"by_{dimension}"]]
        resp.content_type = "text/csv; charset=utf-8"
        resp.set_header("Content-Disposition", 'attachment; filename="summary.csv"')
        resp.data = b"".join(csv_lines(rows, ("group", "name", "count", *STATUSES)))


class Timeseries:
    """`GET /reports/timeseries`: per hour or day, dense and zero-filled, in UTC."""

    def __init__(self, db: Database, now: Callable[[], str] = utc_now_text):
        self.db, self.now = db, now

    def on_get(self, req, resp):
        resp.media = timeseries(self.db, parse_query(req, "queries/timeseries.json"), self.now)
