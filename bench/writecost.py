"""What a write costs the database: the SQL of a create and of a batch, statement by statement.

    .venv/bin/python bench/writecost.py [--records 100000] [--databases sqlite,postgresql] [--rounds 200]

The proof behind the batch and create targets of docs/benchmarks.md that are
not met: it times the statements the service runs for a create, on databases
holding `--records` records loaded with `python -m workflow import`, without
HTTP, without Python around them and without any other load.

SQLite, through the service's own write connection (`SQLiteDatabase._open`):
`--rounds` transactions of `BEGIN IMMEDIATE`, the records' insert, their
creation events and `COMMIT`, for 100 records (`insert_record_set`,
`insert_creation_events`) and for one (`insert_record`, `insert_event`). Each on
one connection, as one writer alone writes, and on two connections taking
turns, as the two workers of `serve` do: SQLite empties a connection's page
cache whenever another connection has written. Then the 100-record
transaction again on copies of the file without each group of indexes (and
without the count trigger), to show what each costs. The WAL is checkpointed
every 50 transactions, outside the timing, as the service's checkpointer does.

PostgreSQL: `EXPLAIN (ANALYZE, BUFFERS)` of `insert_records_with_events` (the
one statement of a create without an idempotency key) for 100 records and for
one, split into the records' insert, the events' insert, reading the JSON, the
foreign-key checks and the count trigger, each statement in autocommit as the
service sends it; again without each group of indexes; and the same statement
without EXPLAIN, timed by the client (commit and round trip included).

Every case has a copy of the loaded database of its own (a file copy, or
`CREATE DATABASE ... TEMPLATE`), and the cases take turns, one transaction
each per round, so that a slow spell of the shared machine falls on all of
them alike. Medians in µs. Results go between the `writecost` markers of
docs/benchmarks.md. Reuses bench/run.py's and bench/scale.py's helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402  (bench/run.py)
import scale  # noqa: E402  (bench/scale.py: load, clean_env)

sys.path.insert(0, str(base.ROOT))
from workflow_service.config import settings_from_mapping  # noqa: E402
from workflow_service.db import SQLiteDatabase, _SQLiteSession  # noqa: E402
from workflow_service.records import ONE_STATEMENT_CREATE, creation_params, insert_records, new_rows  # noqa: E402
from workflow_service.sqlfiles import load_queries  # noqa: E402
from workflow_service.timeutil import utc_now_text  # noqa: E402

BATCH = 100
CHECKPOINT_EVERY = 50
# What the service keeps up on every insert besides the table and its primary key, and what for.
DROPS = [
    ("the four (x, created_at, id) indexes", "listing by date, filtered by status, category or source",
     ["ix_records_created", "ix_records_status_created", "ix_records_category_created",
      "ix_records_source_created"], []),
    ("the three (x, id[, status]) indexes", "sorting by status, category or source at any depth; reports",
     ["ix_records_status_id", "ix_records_category_id_status", "ix_records_source_id_status"], []),
    ("the pending-queue index", "the worker's claim of due pending records", ["ix_records_pending_queue"], []),
    ("the count trigger", "totals and the summary without counting the table", [], ["record_counts_insert"]),
]


def bodies(count: int, rng: random.Random) -> list[list[dict]]:
    """Twenty request bodies' records, `count` each, as the benchmark's create and batch scenarios send."""
    return [[base.make_record(rng) for _ in range(count)] for _ in range(20)]


# ------------------------------------------------------------------ SQLite


class TimedSession:
    """The session `insert_records` writes through, timing each statement it runs."""

    def __init__(self, session):
        self.session, self.queries, self.times = session, session.queries, []

    def run(self, name: str, params: dict | None = None) -> int:
        started = time.perf_counter()
        count = self.session.run(name, params)
        self.times.append(time.perf_counter() - started)
        return count


def sqlite_round(conn, queries, records: list[dict]) -> list[float]:
    """One create transaction as the service runs it (`insert_records`); the seconds of BEGIN, the
    records' insert, their events' and COMMIT."""
    rows, now = new_rows(records), utc_now_text()
    session = TimedSession(_SQLiteSession(conn.cursor(), queries))
    started = time.perf_counter()
    conn.execute(queries["begin_write"])
    begun = time.perf_counter()
    insert_records(session, rows, "writecost", now)
    committing = time.perf_counter()
    conn.execute("COMMIT")
    return [begun - started, *session.times, time.perf_counter() - committing]


class SQLiteCase:
    """One case: a copy of the loaded file, its write connections, and the timings of its transactions."""

    def __init__(self, loaded: Path, path: Path, size: int, connections: int, drop):
        self.size, self.drop = size, drop
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{loaded}{suffix}").exists():
                shutil.copyfile(f"{loaded}{suffix}", f"{path}{suffix}")
        if drop:
            with sqlite3.connect(path) as conn:
                for name in drop[2]:
                    conn.execute(f"DROP INDEX {name}")
                for name in drop[3]:
                    conn.execute(f"DROP TRIGGER {name}")
        self.db = SQLiteDatabase(settings_from_mapping({"DATABASE_URL": f"sqlite:///{path}"}))
        self.conns = [self.db._open("write") for _ in range(connections)]  # the service's, pragmas and all
        self.checkpointer = self.db._open("read")
        self.work = bodies(size, random.Random(11))
        self.done, self.parts = 0, []

    def step(self, measured: bool) -> None:
        timing = sqlite_round(self.conns[self.done % len(self.conns)], self.db.queries,
                              self.work[self.done % len(self.work)])
        if measured:
            self.parts.append(timing)
        self.done += 1
        if self.done % CHECKPOINT_EVERY == 0:
            self.checkpointer.execute(self.db.queries["wal_restart"]).fetchall()

    def close(self) -> None:
        for conn in (*self.conns, self.checkpointer):
            conn.close()


def summarise(parts: list[list[float]], size: int) -> dict:
    names = ("begin", "records", "events", "commit")
    out = {name: round(statistics.median(p[i] for p in parts) * 1e6) for i, name in enumerate(names)}
    total = statistics.median(sum(p) for p in parts)
    out.update(total=round(total * 1e6), per_record=round(total * 1e6 / size, 1),
               records_per_s=round(size / total))
    return out


def bench_sqlite(args, tmp: Path) -> dict:
    loaded = tmp / "loaded.db"
    seconds = scale.load(f"sqlite:///{loaded}", args.records, tmp, scale.clean_env())
    with sqlite3.connect(loaded) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    specs = [(BATCH, 1, None), (BATCH, 2, None), (1, 1, None), (1, 2, None)]
    specs += [(BATCH, 1, drop) for drop in DROPS]
    cases = [SQLiteCase(loaded, tmp / f"case{i}.db", *spec) for i, spec in enumerate(specs)]
    try:
        # Round by round across the cases, so that a slow spell of the machine falls on all of them.
        for i in range(args.rounds + 10):
            for case in cases:
                case.step(measured=i >= 10)  # the first ones warm the caches up
    finally:
        for case in cases:
            case.close()
    result = {"database": "sqlite", "records": args.records, "load_seconds": round(seconds, 1), "cases": []}
    for case in cases:
        row = summarise(case.parts, case.size)
        row.update(label=f"{case.size} record{'s' if case.size > 1 else ''}", connections=len(case.conns),
                   without=case.drop[0] if case.drop else "", serves=case.drop[1] if case.drop else "")
        result["cases"].append(row)
        base.log(f"sqlite {row['label']}, {row['connections']} connection(s)"
                 f"{', without ' + row['without'] if row['without'] else ''}: {row['total']} µs")
    return result


# ------------------------------------------------------------------ PostgreSQL


def explain_parts(plan: dict) -> dict:
    """The parts of one EXPLAIN (ANALYZE, FORMAT JSON) of insert_records_with_events, in ms."""
    top = plan["Plan"]
    children = {p.get("Subplan Name") or p["Node Type"]: p for p in top.get("Plans", [])}
    insert = children["CTE created"]
    scan = insert["Plans"][0]
    triggers = plan.get("Triggers", [])
    return {
        "execution": plan["Execution Time"],
        "records_insert": insert["Actual Total Time"] - scan["Actual Total Time"],
        "json": scan["Actual Total Time"],
        "events_insert": top["Actual Total Time"] - children["CTE Scan"]["Actual Total Time"],
        "foreign_key": sum(t["Time"] for t in triggers if t["Trigger Name"].startswith("RI_ConstraintTrigger")),
        "count_trigger": sum(t["Time"] for t in triggers if t["Trigger Name"] == "record_counts_insert"),
        "buffers": top["Shared Hit Blocks"] + top["Shared Read Blocks"],
    }


class PostgresCase:
    """One case: its own copy of the loaded database, a connection in autocommit (each statement
    commits, as the service's create does), and its timings: plan parts or the client's wall time."""

    def __init__(self, url: str, size: int, drop, explain: bool):
        import psycopg

        self.size, self.drop, self.explain = size, drop, explain
        self.conn = psycopg.connect(url, autocommit=True)
        for index in drop[2] if drop else []:
            self.conn.execute(f"DROP INDEX {index}")
        for trigger in drop[3] if drop else []:
            self.conn.execute(f"DROP TRIGGER {trigger} ON records")
        self.conn.execute("VACUUM ANALYZE")
        self.sql = ("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " if explain else "") \
            + load_queries("postgresql")[ONE_STATEMENT_CREATE]
        self.work = bodies(size, random.Random(11))
        self.done, self.parts = 0, []

    def step(self, measured: bool) -> None:
        params = creation_params(new_rows(self.work[self.done % len(self.work)]), "writecost", utc_now_text())
        started = time.perf_counter()
        cur = self.conn.execute(self.sql, params)
        if measured:
            self.parts.append(explain_parts(cur.fetchone()[0][0]) if self.explain
                              else time.perf_counter() - started)
        self.done += 1

    def summary(self) -> dict | int:
        """Medians in µs: of each part of the plan, or of the wall time."""
        if not self.explain:
            return round(statistics.median(self.parts) * 1e6)
        return {key: round(statistics.median(p[key] for p in self.parts) * (1 if key == "buffers" else 1000))
                for key in self.parts[0]}


def bench_postgresql(args, tmp: Path) -> dict:
    name = f"wf_writecost_{os.getpid()}"
    specs = [(BATCH, None, True), *[(BATCH, drop, True) for drop in DROPS], (1, None, True),
             (BATCH, None, False), (1, None, False)]
    names = [name] + [f"{name}_{i}" for i in range(len(specs))]
    base.pg_admin(f'CREATE DATABASE "{name}"')
    cases: list[PostgresCase] = []
    try:
        seconds = scale.load(base.pg_url(name), args.records, tmp, scale.clean_env())
        for copy in names[1:]:
            base.pg_admin(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
        cases = [PostgresCase(base.pg_url(copy), *spec) for copy, spec in zip(names[1:], specs, strict=True)]
        for i in range(args.rounds + 10):
            for case in cases:
                case.step(measured=i >= 10)
        result = {"database": "postgresql", "records": args.records, "load_seconds": round(seconds, 1),
                  "cases": []}
        for case in cases:
            if not case.explain:
                result[f"autocommit_{case.size}"] = case.summary()
                continue
            row = case.summary()
            row.update(label=f"{case.size} record{'s' if case.size > 1 else ''}",
                       without=case.drop[0] if case.drop else "", serves=case.drop[1] if case.drop else "")
            result["cases"].append(row)
            base.log(f"postgresql {row['label']}{', without ' + row['without'] if row['without'] else ''}: "
                     f"{row['execution']} µs")
        return result
    finally:
        for case in cases:
            case.conn.close()
        for each in names:
            base.pg_admin(f'DROP DATABASE IF EXISTS "{each}" WITH (FORCE)')


# ------------------------------------------------------------------ report


def table(header: list[str], align: str, rows: list[list]) -> list[str]:
    """A markdown table; `align` has an "l" (text) or "r" (a number) for each column."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def render(results: list[dict], args) -> str:
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `bench/writecost.py --records "
             f"{args.records} --rounds {args.rounds}`; medians, µs."]
    for r in results:
        lines += ["", f"### {r['database']}: {r['records']:,} records", ""]
        if r["database"] == "sqlite":
            lines += table(["transaction", "connections", "without", "BEGIN", "records", "events", "COMMIT", "total",
                            "per record", "records/s, one writer"], "lrlrrrrrrr",
                           [[c["label"], c["connections"], c["without"] or "-", c["begin"], c["records"], c["events"],
                             c["commit"], f"**{c['total']}**", c["per_record"], f"{c['records_per_s']:,}"]
                            for c in r["cases"]])
            continue
        lines += table(["statement", "without", "execution", "records' insert", "events' insert", "JSON",
                        "foreign keys", "count trigger", "buffers"], "llrrrrrrr",
                       [[c["label"], c["without"] or "-", f"**{c['execution']}**", c["records_insert"],
                         c["events_insert"], c["json"], c["foreign_key"], c["count_trigger"], f"{c['buffers']:.0f}"]
                        for c in r["cases"]])
        lines += ["", f"The same statement in autocommit, timed by the client (commit and round trip included): "
                      f"{r[f'autocommit_{BATCH}']:,} µs for {BATCH} records, {r['autocommit_1']:,} µs for one."]
    lines += ["", "What each dropped group serves: " + "; ".join(f"{d[0]}: {d[1]}" for d in DROPS) + "."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--rounds", type=int, default=200, help="transactions timed per case (default 200)")
    ap.add_argument("--output", default=str(base.ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--json", help="where the raw results go (default bench/results/writecost-<time>.json)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="wf-writecost-") as tmp:
        for kind in args.databases.split(","):
            results.append(bench_sqlite(args, Path(tmp)) if kind == "sqlite" else bench_postgresql(args, Path(tmp)))
    text = render(results, args)
    print(text)
    base.write_section(Path(args.output), "writecost", "## What a write costs the database (`bench/writecost.py`)",
                       text)
    out = Path(args.json or base.ROOT / "bench" / "results" / f"writecost-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
