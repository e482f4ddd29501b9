"""Listing mechanics shared by the records resource and exports: filters, keyset cursors, CSV.

A cursor is the last row's sort value and id (Datasette's keyset idea) plus a
digest of the filters and sort it was made for, base64url-encoded with a
checksum. A cursor for other filters, or one that does not decode and check,
is a 422; a well-formed cursor a client writes itself is only a position, so
it can show nothing a filter would not.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import re

from .errors import ValidationFailed, problem
from .states import PENDING

FILTERS = ("status", "category", "source")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
CSV_COLUMNS = ("id", "source", "category", "status", "classification", "score", "error", "attempts",
               "created_at", "updated_at", "processed_at", "payload", "result")


def filter_fragments(query: dict, after: str, before: str) -> tuple[tuple[str, ...], dict]:
    """The whitelisted filter fragments and their parameters for a query."""
    names, params = [], {}
    for name in FILTERS:
        if query.get(name) is not None:
            names.append(f"filter.{name}")
            params[name] = query[name]
    if query.get(after) is not None:
        names.append("filter.created_from")
        params["created_from"] = query[after]
    if query.get(before) is not None:
        names.append("filter.created_to")
        params["created_to"] = query[before]
    return tuple(names), params


def is_date_filter(name: str) -> bool:
    """Whether a filter fragment bounds created_at."""
    return name.startswith("filter.created")


def has_date_filter(filters: tuple[str, ...]) -> bool:
    """Whether the filters bound created_at (the maintained counts cannot answer those)."""
    return any(map(is_date_filter, filters))


def walks(mix: dict[str, tuple[int, int]], status: str, descending: bool, rows: int) -> tuple[float, float]:
    """How many index entries a listing of `status` with a category (or a source), sorted by
    created_at, would read to find `rows` records: walking the status's records in time order
    checking the category, and walking the category's checking the status.

    `mix[s]` is (records of status s with the category, records of status s), from the
    maintained counts. The model: within a status a category is spread evenly over time; the
    statuses are not: pending records are the newest (a record leaves pending when it is
    processed), the finished ones (processed, failed) older and mixed together. The databases'
    planners assume every status spread evenly, which a workflow's data never is.
    """

    def walk(matching: int, among: int) -> float:  # entries read among `among` to meet `rows` of `matching`
        return among if matching <= rows else rows * among / matching

    matching, in_status = mix.get(status, (0, 0))
    in_category = {s: m for s, (m, _) in mix.items()}
    pending = in_category.get(PENDING, 0)
    finished = sum(in_category.values()) - pending
    if status == PENDING:
        by_category = (0 if descending else finished) + walk(matching, pending)
    else:
        by_category = (pending if descending else 0) + walk(matching, finished)
    return walk(matching, in_status), by_category


def scope_digest(query: dict) -> str:
    """What a cursor is bound to: the filters and the sort."""
    scope = {k: query.get(k) for k in (*FILTERS, "created_after", "created_before", "sort_by", "sort_order")}
    return hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()[:16]


def _checksum(raw: bytes) -> str:
    return hashlib.sha256(b"workflow-cursor:" + raw).hexdigest()[:12]


def encode_cursor(query: dict, row: dict) -> str:
    """The cursor that continues after `row`."""
    raw = json.dumps({"v": row[query["sort_by"]], "id": row["id"], "scope": scope_digest(query)},
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + _checksum(raw)


def decode_cursor(query: dict, token: str) -> dict:
    """The (value, id) a cursor points after; ValidationFailed when it is not one of ours for this query."""

    def bad(message: str):
        return ValidationFailed(details=[problem(["query", "cursor"], message)])

    body, _, checksum = token.partition(".")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad("is not a cursor returned by this service") from None
    if _checksum(raw) != checksum or not isinstance(data, dict) or set(data) != {"v", "id", "scope"}:
        raise bad("is not a cursor returned by this service")
    if data["scope"] != scope_digest(query):
        raise bad("was made for other filters or another sort; start again without a cursor")
    value, record_id = data["v"], data["id"]
    valid_value = isinstance(value, str) and (query["sort_by"] != "created_at" or _STAMP.match(value))
    if not valid_value or not isinstance(record_id, str) or not UUID_RE.match(record_id):
        raise bad("is not a cursor returned by this service")
    return {"cursor_value": value, "cursor_id": record_id}


def csv_lines(rows, columns=CSV_COLUMNS):
    """Encode rows as CSV, a header first, yielding UTF-8 chunks of about 64 KiB."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
        if buffer.tell() > 65536:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def wants_csv(req, query: dict) -> bool:
    """`format=csv`, or an Accept header that prefers text/csv to JSON."""
    if req.get_param("format") is not None:
        return query.get("format") == "csv"
    accept = req.get_header("Accept") or ""
    return "text/csv" in accept and req.client_prefers(["application/json", "text/csv"]) == "text/csv"
