"""The named-statement SQL files: dialect parity, purpose comments, parse errors, composition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workflow_service.sqlfiles import SQL_DIR, Queries, SQLFileError, load_queries, parse_sql_file

DIALECTS = ("sqlite", "postgresql")
NAME_LINE = re.compile(r"^--\s*name:\s*(\S+)\s*$")
# Statements that exist in one dialect only, by design: SQLite connection pragmas and its
# explicit BEGINs. Anything else must exist in both (PostgreSQL's snapshot is psycopg's
# BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY, db.py).
ONLY_IN = {
    "sqlite": {"pragma.journal_mode", "pragma.synchronous", "pragma.foreign_keys", "pragma.write_cache",
               "pragma.read_cache", "pragma.temp_store", "pragma.no_auto_checkpoint", "pragma.no_busy_wait",
               "wal_checkpoint", "wal_restart", "begin_read", "begin_write",
               "savepoint", "rollback_to_savepoint", "release_savepoint", "insert_record",
               "insert_record_set", "insert_creation_events"},
    "postgresql": {"insert_records_with_events", "set_outcomes", "insert_events", "list_records_with_total",
                   "fold_lock_timeout", "lock_count_shards", "fold_counts", "drop_empty_counts",
                   "claim_pending_plan", "claim_pending_plan_end"},
}


def sql_files(dialect: str) -> list[Path]:
    return sorted((SQL_DIR / dialect).glob("*.sql"))


# ------------------------------------------------------------------ the real files


def test_same_files_in_both_dialects():
    assert [p.name for p in sql_files("sqlite")] == [p.name for p in sql_files("postgresql")]
    assert sql_files("sqlite"), "no SQL files found"


def test_dialect_parity_of_statement_names():
    sqlite_names = set(load_queries("sqlite").names())
    pg_names = set(load_queries("postgresql").names())
    assert sqlite_names - pg_names == ONLY_IN["sqlite"]
    assert pg_names - sqlite_names == ONLY_IN["postgresql"]


@pytest.mark.parametrize("filename", [p.name for p in sql_files("sqlite")])
def test_dialect_parity_per_file(filename):
    names = {d: set(parse_sql_file(SQL_DIR / d / filename)) for d in DIALECTS}
    only = ONLY_IN["sqlite"] | ONLY_IN["postgresql"]
    assert names["sqlite"] - only == names["postgresql"] - only


@pytest.mark.parametrize("path", [p for d in DIALECTS for p in sql_files(d)], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_statement_has_a_purpose_comment(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    found = 0
    for number, line in enumerate(lines, 1):
        match = NAME_LINE.match(line)
        if not match:
            continue
        found += 1
        following = lines[number] if number < len(lines) else ""
        comment = following.strip()
        assert comment.startswith("--") and comment.lstrip("-").strip(), (
            f"{path}:{number + 1}: statement {match.group(1)!r} needs a one-line purpose comment after '-- name:'"
        )
        assert not NAME_LINE.match(following), f"{path}:{number + 1}: purpose comment missing"
    assert found, f"{path} has no named statements"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_loaded_statements_are_clean(dialect):
    queries = load_queries(dialect)
    for name in queries.names():
        text = queries[name]
        assert text == text.strip() and not text.endswith(";"), name
        assert "{record_columns}" not in text, f"{name}: shared fragments are expanded at load time"
        assert not any(line.lstrip().startswith("--") for line in text.splitlines()), f"{name} kept a comment"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_templates_compose_without_leftover_slots(dialect):
    queries = load_queries(dialect)
    filters = tuple(n for n in queries.names() if n.startswith("filter."))
    orders = [n for n in queries.names() if n.startswith("order.")]
    assert filters and orders
    for template in ("list_records", "list_records_with_total", "count_records", "summary_counts"):
        if template not in queries:
            continue
        slots = {"filters": filters}
        if "{order}" in queries[template]:
            slots["order"] = orders[0]
        if "{after}" in queries[template]:
            slots["after"] = ("after.created_at.asc",)
        composed = queries.compose(template, **slots)
        assert not re.search(r"\{[a-z_.]+\}", composed), composed


def test_unknown_statement_name():
    with pytest.raises(KeyError, match="no SQL statement named 'nope'"):
        load_queries("sqlite")["nope"]
    assert "ping" in load_queries("sqlite") and "nope" not in load_queries("sqlite")


# ------------------------------------------------------------------ parse errors


def write(tmp_path: Path, text: str, name: str = "bad.sql") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_good_file(tmp_path):
    path = write(tmp_path, (
        "-- File header.\n\n"
        "-- name: first\n-- Purpose.\nSELECT 1;\n\n"
        "-- name: second.thing\n-- Purpose.\nSELECT a,\n  -- inline comment\n  b FROM t;\n"
    ))
    assert parse_sql_file(path) == {"first": "SELECT 1", "second.thing": "SELECT a,\n  b FROM t"}


@pytest.mark.parametrize("text, line, fragment", [
    ("-- name: a\n-- p\nSELECT 1;\n-- name: a\n-- p\nSELECT 2;\n", 4, "'a' is defined twice"),
    ("-- header\nSELECT 1;\n-- name: a\n-- p\nSELECT 2;\n", 2, "SQL before the first '-- name:' line"),
    ("-- name: a\n-- p\nSELECT 1;\n-- name: empty\n-- only a purpose\n\n-- name: b\n-- p\nSELECT 2;\n",
     4, "statement 'empty' is empty"),
    ("-- name: a\n-- p\nSELECT 1;\n-- name: last\n-- p\n;\n", 4, "statement 'last' is empty"),
    ("-- name: Bad-Name\n-- p\nSELECT 1;\n", 1, "bad statement name 'Bad-Name'"),
    ("-- name:\n-- p\nSELECT 1;\n", 1, "bad statement name ''"),
])
def test_parse_errors_report_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(SQLFileError) as info:
        parse_sql_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert fragment in message


def test_load_queries_rejects_name_defined_in_two_files(tmp_path):
    (tmp_path / "sqlite").mkdir()
    write(tmp_path / "sqlite", "-- name: same\n-- p\nSELECT 1;\n", "a.sql")
    write(tmp_path / "sqlite", "-- name: same\n-- p\nSELECT 2;\n", "b.sql")
    with pytest.raises(SQLFileError, match=r"b\.sql: statement 'same' is also defined in another file"):
        load_queries("sqlite", tmp_path)


def test_load_queries_rejects_empty_folder(tmp_path):
    (tmp_path / "sqlite").mkdir()
    with pytest.raises(SQLFileError, match="no SQL statements found"):
        load_queries("sqlite", tmp_path)


def test_load_queries_expands_fragments(tmp_path):
    (tmp_path / "sqlite").mkdir()
    write(tmp_path / "sqlite", (
        "-- name: cols\n-- p\nid, name\n"
        "-- name: get\n-- p\nSELECT {cols} FROM t WHERE {filters};\n"
    ), "q.sql")
    queries = load_queries("sqlite", tmp_path)
    assert queries["get"] == "SELECT id, name FROM t WHERE {filters}"


# ------------------------------------------------------------------ compose


@pytest.fixture
def queries() -> Queries:
    return Queries({
        "list": "SELECT * FROM t WHERE {filters} ORDER BY {order} LIMIT 5",
        "count": "SELECT count(*) FROM t WHERE {filters}",
        "filter.a": "a = :a",
        "filter.b": "b > :b OR b IS NULL",
        "order.x.asc": "x ASC, id ASC",
        "order.x.desc": "x DESC, id DESC",
    })


def test_compose_with_no_filters_is_true(queries):
    assert queries.compose("count", filters=()) == "SELECT count(*) FROM t WHERE TRUE"


def test_compose_joins_filters_with_and_in_parentheses(queries):
    assert queries.compose("count", filters=("filter.a",)) == "SELECT count(*) FROM t WHERE (a = :a)"
    assert queries.compose("count", filters=["filter.a", "filter.b"]) == (
        "SELECT count(*) FROM t WHERE (a = :a) AND (b > :b OR b IS NULL)"
    )


def test_compose_inserts_order_fragment(queries):
    assert queries.compose("list", filters=("filter.b",), order="order.x.desc") == (
        "SELECT * FROM t WHERE (b > :b OR b IS NULL) ORDER BY x DESC, id DESC LIMIT 5"
    )
    assert queries.compose("list", filters=(), order="order.x.asc") == (
        "SELECT * FROM t WHERE TRUE ORDER BY x ASC, id ASC LIMIT 5"
    )


def test_compose_is_stable_across_calls(queries):
    first = queries.compose("list", filters=("filter.a",), order="order.x.asc")
    other = queries.compose("list", filters=("filter.a",), order="order.x.desc")
    again = queries.compose("list", order="order.x.asc", filters=["filter.a"])
    assert first == again != other


def test_compose_only_accepts_known_fragments(queries):
    with pytest.raises(KeyError):
        queries.compose("count", filters=("a = 1; DROP TABLE t",))
    with pytest.raises(KeyError):
        queries.compose("list", filters=(), order="x; DROP TABLE t")


def test_compose_real_listing(dialect_queries=None):
    q = load_queries("sqlite")
    sql = q.compose("count_records", filters=("filter.status", "filter.category"))
    assert sql == f"SELECT count(*) AS total FROM records WHERE ({q['filter.status']}) AND ({q['filter.category']})"
    assert "ORDER BY created_at DESC, id DESC" in q.compose("list_records", filters=(), order="order.created_at.desc")
