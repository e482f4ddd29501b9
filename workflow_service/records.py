"""HTTP resources for records: create, list, fetch, process, events."""

from __future__ import annotations

import json
import math
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator

from .db import Database, Session
from .errors import DatabaseUnavailable, NotFound, ValidationFailed, problem
from .idempotency import fingerprint, idempotency_key, run_once
from .listing import (
    UUID_RE,
    csv_lines,
    decode_cursor,
    encode_cursor,
    filter_fragments,
    has_date_filter,
    walks,
    wants_csv,
)
from .sqlfiles import Queries
from .states import PENDING, PROCESSED, ProcessorRegistry, transition
from .timeutil import utc_now_text
from .validation import parse_json_body, parse_query, read_body, validate_body

MAX_LIMIT = 200
ONE_STATEMENT_CREATE = "insert_records_with_events"  # a dialect whose SQL has it creates records in one statement
LISTING_WITH_TOTAL = "list_records_with_total"  # one with this reads a page and its counted total at once


_encode = json.JSONEncoder(ensure_ascii=False).encode
_encode_str = json.encoder.encode_basestring


def _json_encoder_once() -> Callable[[object], str]:
    """`_encode`, without building CPython's C encoder anew for every value (3.0 -> 1.6 us a payload).

    `json.encoder.c_make_encoder` is what `JSONEncoder.iterencode` builds on each call; for
    values parsed from JSON (no cycles, no NaN, no other types) one instance serves them all.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return _encode
    chunks = make(None, _encode.__self__.default, _encode_str, None, ": ", ", ", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_encode_payload = _json_encoder_once()

_RANDOM_BITS = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)  # 74 bits: all but version and variant
_VERSION_4 = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant


def new_record_ids(count: int) -> list[str]:
    """`count` new record ids: UUIDs version 4 whose first 48 bits are the Unix time in milliseconds.

    The other 74 bits are random. Random ids put every insert at a random place
    in each index that holds ids (primary key, audit trail, the listings'
    tie-break by id), so a 100-record batch dirtied ~500 pages; ids that start
    with the time land together at the end (docs/decisions.md, "Record ids").
    One clock reading and one read of the system's random source serve them all.
    """
    stamp = (time.time_ns() // 1_000_000) << 80 | _VERSION_4
    noise = os.urandom(10 * count)
    number = int.from_bytes
    hexes = (f"{stamp | number(noise[i:i + 10], 'big') & _RANDOM_BITS:032x}" for i in range(0, 10 * count, 10))
    return [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in hexes]


_float_repr = float.__repr__


def _score_json(score: float | int) -> str:
    """What `_encode` gives for the float, in a fifth of its time (a processed record's 2.2 of 3.8 µs).

    SQLite may hand back a whole REAL as an int. json writes a finite float as its repr.
    """
    score = float(score)
    return _float_repr(score) if math.isfinite(score) else _encode(score)


RECORD_COLUMNS = ("id", "source", "category", "payload", "status", "result", "classification", "score", "error",
                  "attempts", "created_at", "updated_at", "processed_at")  # the `record_columns` SQL fragment's order
_in_column_order = operator.itemgetter(*RECORD_COLUMNS)


def record_json(row: dict | tuple) -> str:
    """A stored row (the columns of `record_columns`) as the record's JSON text.

    `row` is a dict of those columns or a tuple of them in their order (`Session.tuples`,
    no dict per row for a page of records). `payload` and `result` are stored as
    JSON text this service wrote itself (validated on the way in), so they are
    spliced in as they are. One template for the fixed shape: half the cost of a
    loop over the columns, which a page of 50 records pays 50 times.
    """
    if isinstance(row, dict):
        row = _in_column_order(row)
    (record_id, source, category, payload, status, result, classification, score, error, attempts, created_at,
     updated_at, processed_at) = row
    q = _encode_str  # what _encode does for a str, minus its dispatch
    return (
        f'{{"id": {q(record_id)}, "source": {q(source)}, "category": {q(category)}, '
        f'"payload": {payload}, "status": {q(status)}, '
        f'"result": {"null" if result is None else result}, '
        f'"classification": {"null" if classification is None else q(classification)}, '
        f'"score": {"null" if score is None else _score_json(score)}, '
        f'"error": {"null" if error is None else q(error)}, "attempts": {attempts:d}, '
        f'"created_at": {q(created_at)}, "updated_at": {q(updated_at)}, '
        f'"processed_at": {"null" if processed_at is None else q(processed_at)}}}'
    )


def send_json(resp, text: str, status: int = 200) -> None:
    """Send JSON text that is already encoded.

    As bytes at once: Falcon would keep `resp.text` and its encoding side by side
    until the response is sent, 0.4 MiB each for a 1,000-record batch.
    """
    resp.status = status
    resp.content_type = "application/json"
    resp.data = text.encode()


def checked_id(record_id: str) -> str:
    """A canonical UUID string, or NotFound (SPEC: a malformed id is a 404)."""
    record_id = record_id.lower()
    if not UUID_RE.match(record_id):
        raise NotFound("record not found")
    return record_id


class _Ingest:
    """What `POST /records` and `POST /records/batch` share: read, validate, insert once per key.

    With AT_ONCE set, at most that many requests of the resource are past reading
    their body (parsing, writing, rendering) in one process; the others wait for
    one to finish, up to the database timeout.
    """

    AT_ONCE: int | None = None

    def __init__(self, db: Database, max_body_bytes: int, now: Callable[[], str] = utc_now_text):
        self.db, self.max_body_bytes, self.now = db, max_body_bytes, now
        self._slots = threading.BoundedSemaphore(self.AT_ONCE) if self.AT_ONCE else None

    def ingest(self, req, resp, path: str, schema: str, records: Callable[[dict], list[dict]],
               render: Callable[[list[dict], str], str]) -> list[dict]:
        """Create the body's records (or replay the key's response); return the rows created now."""
        raw = read_body(req, self.max_body_bytes)  # before taking a turn: a slow client holds none
        if self._slots is None:
            return self._create(req, resp, raw, path, schema, records, render)
        if not self._slots.acquire(timeout=self.db.settings.db_timeout_seconds):
            raise DatabaseUnavailable("too many batches in progress, try again later")
        try:
            return self._create(req, resp, raw, path, schema, records, render)
        finally:
            self._slots.release()

    def _create(self, req, resp, raw: bytes, path: str, schema: str, records: Callable[[dict], list[dict]],
                render: Callable[[list[dict], str], str]) -> list[dict]:
        """`render(rows, now)` gives the response for `rows` (see `new_rows`) created at `now`."""
        body = validate_body(parse_json_body(raw), schema)
        rows = new_rows(records(body))
        key = idempotency_key(req)
        request_hash = fingerprint("POST", path, body) if key else ""
        del body  # a 1,000-record batch parsed is about 0.5 MiB, held no longer than this
        if key is None and ONE_STATEMENT_CREATE in self.db.queries:
            # PostgreSQL: one statement in autocommit, one round trip instead of BEGIN, the inserts, COMMIT.
            now = self.now()
            self.db.write_statement(ONE_STATEMENT_CREATE, creation_params(rows, req.context.request_id, now))
            send_json(resp, render(rows, now), 201)
            return rows
        status, text, now = run_once(self.db, key, request_hash,
                                     lambda s: insert_records(s, rows, req.context.request_id, self.now()),
                                     lambda now: render(rows, now), records=len(rows))
        send_json(resp, text, status)
        if now is None:
            resp.set_header("Idempotent-Replayed", "true")
            return []
        return rows


class ListingPlanner:
    """Which index a listing of a status and a category (or a source), sorted by created_at, walks.

    The databases' planners assume a status's records spread evenly over time and may walk the
    category's index from the end where that status has none (`?status=processed&category=c1`,
    newest first, reads every newer pending record of the category first: docs/benchmarks.md,
    "A slow shape"). `listing.walks` estimates both walks from the maintained counts; when the
    status-led one reads less, the listing's fragments ask for (status, created_at, id). The
    counts of a category or source are read at most every MIX_SECONDS: they choose a plan, never
    a result.
    """

    MIX_SECONDS = 10.0
    MAX_MIXES = 1024  # category and source values remembered; the client chooses them

    BESIDE_STATUS = {"filter.category": "filter.category.beside_status",
                     "filter.source": "filter.source.beside_status"}
    STATUS_LED = {"filter.status": "filter.status.led", **BESIDE_STATUS}

    def __init__(self, db: Database):
        self.db = db
        self._mixes: dict[tuple[str, str], tuple[float, dict[str, tuple[int, int]]]] = {}

    def plan(self, query: dict, filters: tuple[str, ...], order: str, rows: int) -> tuple[tuple[str, ...], str]:
        """The filters and order fragments to use for a page that reads `rows` records."""
        beside = [f for f in filters if f in self.BESIDE_STATUS]
        if query["sort_by"] != "created_at" or "filter.status" not in filters or len(beside) != 1:
            return filters, order
        dimension = beside[0].removeprefix("filter.")
        by_status, by_other = walks(self.mix(dimension, query[dimension]), query["status"],
                                    query["sort_order"] == "desc", rows)
        if by_status >= by_other:
            return filters, order
        return tuple(self.STATUS_LED.get(f, f) for f in filters), order + ".status_led"

    def mix(self, dimension: str, value: str) -> dict[str, tuple[int, int]]:
        """For each status: (its records with this category or source, all its records)."""
        key, now = (dimension, value), time.monotonic()
        known = self._mixes.get(key)
        if known is not None and now - known[0] < self.MIX_SECONDS:
            return known[1]
        with self.db.read() as s:
            rows = s.all_sql(s.queries.compose("status_mix", filters=(f"filter.{dimension}",)), {dimension: value})
        mix = {r["status"]: (r["matching"], r["total"]) for r in rows}
        if len(self._mixes) >= self.MAX_MIXES:
            self._mixes.clear()
        self._mixes[key] = (now, mix)
        return mix


class RecordCollection(_Ingest):
    """`POST /records` and `GET /records`."""

    def __init__(self, db: Database, max_body_bytes: int, now: Callable[[], str] = utc_now_text):
        super().__init__(db, max_body_bytes, now)
        self.planner = ListingPlanner(db)

    def on_post(self, req, resp):
        created = self.ingest(req, resp, "/records", "record_create.json", lambda body: [body],
                              lambda rows, now: next(new_records_json(rows, now)))
        record_id = created[0]["id"] if created else json.loads(resp.data)["id"]
        resp.location = f"{req.root_path}/records/{record_id}"

    def on_get(self, req, resp):
        query = parse_query(req, "queries/list_records.json")
        filters, params = filter_fragments(query, "created_after", "created_before")
        order = f"order.{query['sort_by']}.{query['sort_order']}"
        if wants_csv(req, query):
            return stream_csv(resp, self.db, filters, params, order, "records.csv")
        limit = min(query["limit"], MAX_LIMIT)
        after = ()
        if query.get("cursor"):
            if query["offset"]:
                raise ValidationFailed(details=[problem(["query", "offset"], "cannot be combined with cursor")])
            params.update(decode_cursor(query, query["cursor"]))
            after = (f"after.{query['sort_by']}.{query['sort_order']}",)
        params.update(limit=limit + 1, offset=query["offset"])
        page_filters, order = self.planner.plan(query, filters, order, limit + 1 + query["offset"])
        page_sql, total_sql = listing_sql(self.db.queries, filters, after, order, page_filters)
        if total_sql is None:
            with self.db.read() as s:  # one statement: the page and its total from one snapshot
                rows = s.tuples_sql(page_sql, params)
            total = rows[0][-1]
            rows = [row[:-1] for row in rows] if rows[0][0] is not None else []  # no records: one row of NULLs
        else:
            with self.db.read(snapshot=True) as s:
                rows = s.tuples_sql(page_sql, params)
                total = s.one_sql(total_sql, params)["total"]
        more = len(rows) > limit
        rows = rows[:limit]
        tail = _encode({"count": len(rows), "total": total, "limit": limit, "offset": query["offset"],
                        "next_cursor": encode_cursor(query, dict(zip(RECORD_COLUMNS, rows[-1], strict=True)))
                        if more else None})
        send_json(resp, '{"items": [' + ", ".join(map(record_json, rows)) + "], " + tail[1:])


def listing_sql(queries: Queries, filters: tuple[str, ...], after: tuple[str, ...],
                order: str, page_filters: tuple[str, ...] | None = None) -> tuple[str, str | None]:
    """A listing's page statement and its total's, None when the page's rows carry the total
    (LISTING_WITH_TOTAL, when the maintained counts give the total: no date filter).

    `after` is a cursor's position fragment, the page's alone. `page_filters` are `filters` as
    the page reads them (ListingPlanner): a count of every match walks whichever index the
    database chooses.
    """
    page_filters = page_filters or filters
    dated = has_date_filter(filters)
    if LISTING_WITH_TOTAL in queries and not dated:  # the total from record_counts: any fragments serve
        return queries.compose(LISTING_WITH_TOTAL, filters=page_filters, after=after, order=order), None
    # Without a date filter the maintained counts give the total at once.
    return (queries.compose("list_records", filters=(*page_filters, *after), order=order),
            queries.compose("count_records" if dated else "count_from_counts", filters=filters))


def stream_csv(resp, db: Database, filters: tuple, params: dict, order: str, filename: str) -> None:
    """Stream every matching record as CSV from one snapshot, in constant memory."""

    def generate():
        with db.read(snapshot=True) as s:
            sql = s.queries.compose("export_records", filters=filters, order=order)
            yield from csv_lines(s.iter_sql(sql, params))

    resp.content_type = "text/csv; charset=utf-8"
    resp.set_header("Content-Disposition", f'attachment; filename="{filename}"')
    resp.stream = generate()


def new_rows(bodies: list[dict]) -> list[dict]:
    """Validated record bodies as rows to insert: a new id each, the payload as JSON text.

    Built before the write transaction, so that the write lock is held for SQL only.
    """
    return [
        {"id": record_id, "source": b["source"], "category": b["category"], "payload": _encode_payload(b["payload"])}
        for record_id, b in zip(new_record_ids(len(bodies)), bodies, strict=True)
    ]


def insert_records(s: Session, rows: list[dict], request_id: str, now: str) -> str:
    """Insert new rows (see `new_rows`) and their creation events, created at `now`; return `now`.

    PostgreSQL: one statement for all of it. SQLite: one record is a plain
    insert and its event; several are one statement for the records and one
    for their events, reading a JSON array.
    """
    if ONE_STATEMENT_CREATE in s.queries:
        s.run(ONE_STATEMENT_CREATE, creation_params(rows, request_id, now))
    elif len(rows) == 1:
        s.run("insert_record", dict(rows[0], now=now))
        s.run("insert_event", {"record_id": rows[0]["id"], "from_status": None, "to_status": PENDING, "now": now,
                               "request_id": request_id, "detail": None})
    else:
        s.run("insert_record_set", {"rows": _encode(rows), "now": now})
        s.run("insert_creation_events", {"ids": _encode([r["id"] for r in rows]), "now": now,
                                          "request_id": request_id})
    return now


def creation_params(rows: list[dict], request_id: str, now: str) -> dict:
    """The parameters of ONE_STATEMENT_CREATE."""
    return {"rows": _encode(rows), "now": now, "request_id": request_id}


def new_records_json(rows: list[dict], now: str) -> Iterator[str]:
    """New rows (see `new_rows`) created at `now` as their records' JSON text, as `record_json` gives it.

    A template of its own: a new record's state is known without reading it
    back, and most of its fields are constants.
    """
    q = _encode_str
    state = (f'"status": "{PENDING}", "result": null, "classification": null, "score": null, "error": null, '
             f'"attempts": 0, "created_at": {q(now)}, "updated_at": {q(now)}, "processed_at": null}}')
    for r in rows:
        yield (f'{{"id": "{r["id"]}", "source": {q(r["source"])}, "category": {q(r["category"])}, '
               f'"payload": {r["payload"]}, ' + state)


class RecordBatch(_Ingest):
    """`POST /records/batch`: 1-1000 records, validated first, stored all or nothing.

    Two batches at a time per process (AT_ONCE): four threads each holding a
    1,000-record batch as Python objects took a worker to 59-62 MiB, two at a time
    to 55-60, at the same throughput, since the interpreter lock (and on SQLite the
    write lock) lets one of them work at a time anyway (docs/decisions.md).
    """

    AT_ONCE = 2

    def on_post(self, req, resp):
        self.ingest(req, resp, "/records/batch", "records_batch.json", lambda body: body["records"], batch_json)


def batch_json(rows: list[dict], now: str) -> str:
    """The response to a batch: its new records (see `new_rows`) created at `now`."""
    return '{"items": [' + ", ".join(new_records_json(rows, now)) + f'], "count": {len(rows)}}}'


class RecordRetry:
    """`POST /records/{id}/retry`: a failed record becomes pending again."""

    def __init__(self, db: Database, now: Callable[[], str] = utc_now_text):
        self.db, self.now = db, now

    def on_post(self, req, resp, record_id):
        row = transition(self.db, checked_id(record_id), PENDING, actor=req.context.request_id, now=self.now)
        send_json(resp, record_json(row))


class RecordItem:
    """`GET /records/{id}`."""

    def __init__(self, db: Database):
        self.db = db

    def on_get(self, req, resp, record_id):
        with self.db.read() as s:
            rows = s.tuples("get_record", {"id": checked_id(record_id)})
        if not rows:
            raise NotFound("record not found")
        send_json(resp, record_json(rows[0]))


class RecordProcess:
    """`POST /records/{id}/process`: run the processor on a pending record."""

    def __init__(self, db: Database, registry: ProcessorRegistry, now: Callable[[], str] = utc_now_text):
        self.db, self.registry, self.now = db, registry, now

    def on_post(self, req, resp, record_id):
        row = transition(self.db, checked_id(record_id), PROCESSED, registry=self.registry,
                         actor=req.context.request_id, now=self.now)
        send_json(resp, record_json(row))


class RecordEvents:
    """`GET /records/{id}/events`: the audit trail, oldest first."""

    def __init__(self, db: Database):
        self.db = db

    def on_get(self, req, resp, record_id):
        record_id = checked_id(record_id)
        with self.db.read(snapshot=True) as s:
            if s.one("get_record", {"id": record_id}) is None:
                raise NotFound("record not found")
            events = s.all("list_events", {"record_id": record_id})
        resp.media = {"items": events}
