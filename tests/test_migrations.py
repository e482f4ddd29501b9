"""Migrations on SQLite and PostgreSQL: round trips, the CLI, checksums, failures, malformed files, concurrency.

Every test gets a fresh, unmigrated database. Temporary migration sets are copies
of `sql/migrations` under tmp_path, so the real files are never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, empty_database_url, make_settings

from workflow_service.db import open_database
from workflow_service.migrations import MigrationError, Migrator, load_migrations, parse_migration
from workflow_service.sqlfiles import SQL_DIR, load_queries

MIGRATIONS = SQL_DIR / "migrations"
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
CLI_TIMEOUT = 60


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path_factory) -> str:
    """A fresh, unmigrated database for each test."""
    return empty_database_url(request.param, request, tmp_path_factory)


def dialect_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@pytest.fixture
def db(fresh_url):
    database = open_database(make_settings(fresh_url))
    yield database
    database.close()


def inspect(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run a read-only query on its own connection (independent of the service's code)."""
    if dialect_of(url) == "sqlite":
        conn = sqlite3.connect(url[len("sqlite:///"):])
        try:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def table_exists(url: str, table: str) -> bool:
    if dialect_of(url) == "sqlite":
        return bool(inspect(url, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", (table,)))
    return inspect(url, "SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]


def schema_snapshot(url: str) -> set[tuple]:
    """(kind, table, name) of every table, column and index in the database's schema."""
    if dialect_of(url) == "sqlite":
        objects = inspect(url, "SELECT type, tbl_name, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        columns = {
            ("column", table, row[1])
            for kind, table, _ in objects if kind == "table"
            for row in inspect(url, f'PRAGMA table_info("{table}")')
        }
        return set(objects) | columns
    tables = inspect(url, "SELECT 'table', table_name, table_name FROM information_schema.tables "
                          "WHERE table_schema = current_schema()")
    columns = inspect(url, "SELECT 'column', table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema = current_schema()")
    indexes = inspect(url, "SELECT 'index', tablename, indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return set(tables) | set(columns) | set(indexes)


def migration_rows(url: str) -> list[tuple]:
    if not table_exists(url, "schema_migrations"):
        return []
    if dialect_of(url) == "sqlite":
        sql = "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    else:
        sql = ("SELECT version, name, checksum, to_char(applied_at AT TIME ZONE 'UTC', "
               "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM schema_migrations ORDER BY version")
    return inspect(url, sql)


def copy_migrations(tmp_path: Path) -> Path:
    """A private copy of sql/migrations; returns the root to pass to load_migrations."""
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, root)
    return root


def add_migration(root: Path, dialect: str, filename: str, text: str) -> Path:
    path = root / dialect / filename
    path.write_text(text, encoding="utf-8")
    return path


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATABASE_URL", "LOG_LEVEL", "APP_ENV", "API_KEY", "MAX_BODY_BYTES", "DB_TIMEOUT_SECONDS")}
    env.update({"DATABASE_URL": url, "PYTHONPATH": str(ROOT), **extra})
    return env


def run_cli(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m workflow migrate ...` in a directory without a `.env` file."""
    return subprocess.run(
        [sys.executable, "-m", "workflow", "migrate", *args],
        cwd=cwd, env=cli_env(url), capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )


APP_TABLES = ("records", "record_events")


# ------------------------------------------------------------------ round trip


def test_up_down_to_zero_and_up_again(fresh_url, db):
    dialect = dialect_of(fresh_url)
    files = load_migrations(dialect)
    assert files, "there must be at least one migration"
    assert not any(table_exists(fresh_url, t) for t in APP_TABLES)

    applied = Migrator(db).up()
    assert [m.version for m in applied] == [m.version for m in files]
    migrated = schema_snapshot(fresh_url)
    assert all(table_exists(fresh_url, t) for t in APP_TABLES)
    rows = migration_rows(fresh_url)
    assert [(r[0], r[1]) for r in rows] == [(m.version, m.name) for m in files]
    for (_, _, checksum, applied_at), m in zip(rows, files, strict=True):
        assert re.fullmatch(r"[0-9a-f]{64}", checksum)
        assert checksum == hashlib.sha256(m.path.read_bytes()).hexdigest()
        assert TS_RE.match(applied_at), applied_at

    # A second `up` is a no-op.
    assert Migrator(db).up() == []
    assert len(migration_rows(fresh_url)) == len(files)

    rolled = Migrator(db).down(len(files))
    assert [m.version for m in rolled] == [m.version for m in reversed(files)]
    assert not any(table_exists(fresh_url, t) for t in APP_TABLES)
    assert migration_rows(fresh_url) == []
    # Every down section undid its up section completely: only the bookkeeping table is left.
    assert {obj[1] for obj in schema_snapshot(fresh_url)} == {"schema_migrations"}
    assert Migrator(db).down(1) == []

    again = Migrator(db).up()
    assert [m.version for m in again] == [m.version for m in files]
    assert all(table_exists(fresh_url, t) for t in APP_TABLES)
    assert [r[0] for r in migration_rows(fresh_url)] == [m.version for m in files]
    assert schema_snapshot(fresh_url) == migrated


def test_migrated_schema_is_usable(fresh_url, db):
    Migrator(db).up()
    with db.write() as s:
        s.script("DELETE FROM record_events; DELETE FROM records;")
    assert inspect(fresh_url, "SELECT count(*) FROM records") == [(0,)]


def test_down_n_rolls_back_newest_first(fresh_url, db, tmp_path):
    dialect = dialect_of(fresh_url)
    root = copy_migrations(tmp_path)
    real = [m.version for m in load_migrations(dialect)]
    a, b = real[-1] + 1, real[-1] + 2
    add_migration(root, dialect, f"{a:04d}_add_alpha.sql",
                  "-- Alpha.\n-- migrate:up\nCREATE TABLE alpha (id integer);\n-- migrate:down\nDROP TABLE alpha;\n")
    add_migration(root, dialect, f"{b:04d}_add_beta.sql",
                  "-- Beta.\n-- migrate:up\nCREATE TABLE beta (id integer);\n-- migrate:down\nDROP TABLE beta;\n")
    migrator = Migrator(db, migrations=load_migrations(dialect, root=root))

    assert [m.version for m in migrator.up()] == [*real, a, b]
    assert table_exists(fresh_url, "alpha") and table_exists(fresh_url, "beta")

    assert [m.version for m in migrator.down(2)] == [b, a]
    assert not table_exists(fresh_url, "alpha") and not table_exists(fresh_url, "beta")
    assert table_exists(fresh_url, "records")
    assert [r[0] for r in migration_rows(fresh_url)] == real

    # Asking for more steps than applied stops at zero.
    assert [m.version for m in migrator.down(len(real) + 5)] == real[::-1]
    assert migration_rows(fresh_url) == []
    assert not table_exists(fresh_url, "records")


def test_status_reports_pending_and_applied(fresh_url, db, tmp_path):
    dialect = dialect_of(fresh_url)
    root = copy_migrations(tmp_path)
    real = load_migrations(dialect)
    extra = real[-1].version + 1
    add_migration(root, dialect, f"{extra:04d}_add_alpha.sql",
                  "-- migrate:up\nCREATE TABLE alpha (id integer);\n-- migrate:down\nDROP TABLE alpha;\n")
    migrations = load_migrations(dialect, root=root)
    Migrator(db, migrations=migrations[:-1]).up()

    status = Migrator(db, migrations=migrations).status()
    assert [(s["version"], s["name"], s["edited"]) for s in status] == [
        *((m.version, m.name, False) for m in real), (extra, "add_alpha", False)]
    assert all(TS_RE.match(s["applied_at"]) for s in status[:-1])
    assert status[-1]["applied_at"] is None


# ------------------------------------------------------------------ CLI


def test_cli_current_history_status_up_down(fresh_url, tmp_path):
    files = load_migrations(dialect_of(fresh_url))
    last = f"{files[-1].version:04d}_{files[-1].name}"

    r = run_cli(fresh_url, "current", cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "none"), r.stderr

    r = run_cli(fresh_url, "status", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(files)
    assert all(line.endswith("pending") for line in lines), lines

    r = run_cli(fresh_url, "history", cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, ""), r.stderr

    r = run_cli(fresh_url, "up", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [f"applied {m.version:04d}_{m.name}" for m in files]
    assert all(table_exists(fresh_url, t) for t in APP_TABLES)

    r = run_cli(fresh_url, "up", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout

    r = run_cli(fresh_url, "current", cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, last), r.stderr

    r = run_cli(fresh_url, "history", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    history = r.stdout.strip().splitlines()
    assert len(history) == len(files)
    for line, m in zip(history, files, strict=True):
        match = re.fullmatch(r"(\d{4}_[a-z0-9_]+)  applied (\S+)  sha256 ([0-9a-f]{12})", line)
        assert match, line
        assert match.group(1) == f"{m.version:04d}_{m.name}"
        assert TS_RE.match(match.group(2))
        assert match.group(3) == m.checksum[:12]

    r = run_cli(fresh_url, "status", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for line, m in zip(r.stdout.strip().splitlines(), files, strict=True):
        assert re.fullmatch(rf"{m.version:04d}_{m.name}  applied \S+Z", line), line

    r = run_cli(fresh_url, "down", str(len(files) + 3), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [f"rolled back {m.version:04d}_{m.name}" for m in reversed(files)]
    assert not any(table_exists(fresh_url, t) for t in APP_TABLES)

    r = run_cli(fresh_url, "down", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nothing to roll back" in r.stdout

    r = run_cli(fresh_url, "current", cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "none"), r.stderr


@pytest.mark.parametrize("args", [("down", "0"), ("down", "-1"), ("up", "2"), ("status", "1")])
def test_cli_rejects_bad_counts(fresh_url, tmp_path, args):
    r = run_cli(fresh_url, *args, cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert not table_exists(fresh_url, "records")


def test_cli_down_one_by_default(fresh_url, db, tmp_path):
    Migrator(db).up()
    r = run_cli(fresh_url, "down", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = load_migrations(dialect_of(fresh_url))
    assert r.stdout.strip() == f"rolled back {files[-1].version:04d}_{files[-1].name}"
    assert [row[0] for row in migration_rows(fresh_url)] == [m.version for m in files[:-1]]


# ------------------------------------------------------------------ edited migrations


def next_version(dialect: str) -> int:
    return load_migrations(dialect)[-1].version + 1


def test_edited_applied_migration_is_refused(fresh_url, db, tmp_path):
    dialect = dialect_of(fresh_url)
    root = copy_migrations(tmp_path)
    Migrator(db, migrations=load_migrations(dialect, root=root)).up()
    applied_before = migration_rows(fresh_url)

    path = root / dialect / "0001_create_records.sql"
    path.write_text(path.read_text(encoding="utf-8") + "\n-- a harmless-looking edit\n", encoding="utf-8")
    extra = next_version(dialect)
    add_migration(root, dialect, f"{extra:04d}_add_alpha.sql",
                  "-- migrate:up\nCREATE TABLE alpha (id integer);\n-- migrate:down\nDROP TABLE alpha;\n")
    edited = Migrator(db, migrations=load_migrations(dialect, root=root))

    with pytest.raises(MigrationError) as info:
        edited.up()
    message = str(info.value)
    assert "0001_create_records.sql" in message
    assert "edited" in message and "new migration" in message
    assert not table_exists(fresh_url, "alpha"), "nothing may be applied after a checksum mismatch"

    with pytest.raises(MigrationError, match="0001_create_records.sql"):
        edited.down(1)
    assert migration_rows(fresh_url) == applied_before

    status = edited.status()
    assert [(s["version"], s["edited"]) for s in status][0] == (1, True)
    assert not any(s["edited"] for s in status[1:])
    assert status[-1]["version"] == extra and status[-1]["applied_at"] is None


def test_cli_shows_edited_and_refuses_up(fresh_url, db, tmp_path):
    Migrator(db).up()
    # Same effect as editing the file, without touching the real file: change the recorded checksum.
    with db.write() as s:
        s.script("UPDATE schema_migrations SET checksum = '" + "0" * 64 + "' WHERE version = 1;")

    r = run_cli(fresh_url, "status", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^0001_create_records  EDITED after it was applied$", r.stdout, re.M), r.stdout

    for action in ("up", "down"):
        r = run_cli(fresh_url, action, cwd=tmp_path)
        assert r.returncode == 1
        assert "0001_create_records.sql was edited after it was applied" in r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert len(migration_rows(fresh_url)) == len(load_migrations(dialect_of(fresh_url)))


def test_applied_migration_with_missing_file_is_refused(fresh_url, db, tmp_path):
    dialect = dialect_of(fresh_url)
    root = copy_migrations(tmp_path)
    extra = next_version(dialect)
    add_migration(root, dialect, f"{extra:04d}_add_alpha.sql",
                  "-- migrate:up\nCREATE TABLE alpha (id integer);\n-- migrate:down\nDROP TABLE alpha;\n")
    Migrator(db, migrations=load_migrations(dialect, root=root)).up()
    (root / dialect / f"{extra:04d}_add_alpha.sql").unlink()

    with pytest.raises(MigrationError, match=rf"{extra:04d}_add_alpha is applied but its file is missing"):
        Migrator(db, migrations=load_migrations(dialect, root=root)).up()


# ------------------------------------------------------------------ failing migration


def test_failing_migration_rolls_back_completely(fresh_url, db, tmp_path):
    dialect = dialect_of(fresh_url)
    root = copy_migrations(tmp_path)
    real = [m.version for m in load_migrations(dialect)]
    bad = f"{real[-1] + 1:04d}_bad.sql"
    add_migration(root, dialect, bad, (
        "-- A migration whose third statement fails.\n"
        "-- migrate:up\n"
        "CREATE TABLE partial_one (id integer);\n"
        "INSERT INTO partial_one (id) VALUES (1);\n"
        "INSERT INTO no_such_table (id) VALUES (1);\n"
        "CREATE TABLE partial_two (id integer);\n"
        "-- migrate:down\n"
        "DROP TABLE partial_two;\nDROP TABLE partial_one;\n"
    ))
    migrator = Migrator(db, migrations=load_migrations(dialect, root=root))

    with pytest.raises(MigrationError) as info:
        migrator.up()
    message = str(info.value)
    assert bad in message and "(up) failed" in message
    assert "no_such_table" in message
    assert "\n" not in message
    assert not table_exists(fresh_url, "partial_one")
    assert not table_exists(fresh_url, "partial_two")
    # The real migrations ran in their own transactions before and stay applied; the bad one left no row.
    assert [r[0] for r in migration_rows(fresh_url)] == real
    assert table_exists(fresh_url, "records")

    # The database stays usable: the next run fails the same way, and status shows it pending.
    with pytest.raises(MigrationError, match=bad):
        migrator.up()
    assert [s["applied_at"] is None for s in migrator.status()] == [False] * len(real) + [True]


def test_failing_down_keeps_migration_applied(fresh_url, db, tmp_path):
    dialect = dialect_of(fresh_url)
    root = copy_migrations(tmp_path)
    real = [m.version for m in load_migrations(dialect)]
    bad = f"{real[-1] + 1:04d}_bad_down.sql"
    add_migration(root, dialect, bad, (
        "-- migrate:up\nCREATE TABLE alpha (id integer);\n"
        "-- migrate:down\nDROP TABLE alpha;\nDROP TABLE no_such_table;\n"
    ))
    migrator = Migrator(db, migrations=load_migrations(dialect, root=root))
    migrator.up()

    with pytest.raises(MigrationError, match=rf"{bad} \(down\) failed"):
        migrator.down(1)
    assert table_exists(fresh_url, "alpha")
    assert [r[0] for r in migration_rows(fresh_url)] == [*real, real[-1] + 1]


# ------------------------------------------------------------------ malformed files (no database)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_migration_reads_sections(tmp_path):
    text = "-- Intro.\n\n-- migrate:up\nCREATE TABLE a (id int);\n-- migrate:down\nDROP TABLE a;\n"
    path = write(tmp_path, "0007_make_a.sql", text)
    m = parse_migration(path)
    assert (m.version, m.name) == (7, "make_a")
    assert m.up == "CREATE TABLE a (id int);"
    assert m.down == "DROP TABLE a;"
    assert m.checksum == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("-- only a comment\n", ["no '-- migrate:up' section", "add a line '-- migrate:up'"]),
        ("-- migrate:up\nCREATE TABLE a (id int);\n", ["no '-- migrate:down' section", "add a line"]),
        ("-- migrate:down\nDROP TABLE a;\n-- migrate:up\nCREATE TABLE a (id int);\n",
         [":1:", "comes before", "put the up section first"]),
        ("CREATE TABLE a (id int);\n-- migrate:up\nSELECT 1;\n-- migrate:down\n",
         [":1:", "SQL before '-- migrate:up'", "start the file with comments"]),
        ("-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;\n-- migrate:down\n",
         [":3:", "a second '-- migrate:up' section", "keep exactly one"]),
        ("-- migrate:up\n-- nothing here\n\n-- migrate:down\nSELECT 1;\n", ["'-- migrate:up' section is empty"]),
    ],
    ids=["no-up", "no-down", "down-before-up", "sql-before-up", "two-ups", "empty-up"],
)
def test_malformed_migration_files(tmp_path, text, expected):
    path = write(tmp_path, "0001_thing.sql", text)
    with pytest.raises(MigrationError) as info:
        parse_migration(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "0001_.sql", "00001_five.sql"])
def test_bad_migration_file_name(tmp_path, name):
    path = write(tmp_path, name, "-- migrate:up\nSELECT 1;\n-- migrate:down\n")
    with pytest.raises(MigrationError) as info:
        parse_migration(path)
    assert name in str(info.value)
    assert "NNNN_lower_case_name.sql" in str(info.value)


def test_bad_file_name_in_folder_is_reported_by_load(tmp_path):
    (tmp_path / "sqlite").mkdir()
    write(tmp_path / "sqlite", "0001_ok.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\n")
    write(tmp_path / "sqlite", "2_bad.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\n")
    with pytest.raises(MigrationError, match=r"2_bad\.sql.*NNNN_lower_case_name\.sql"):
        load_migrations("sqlite", root=tmp_path)


def test_duplicate_version_is_refused(tmp_path):
    (tmp_path / "sqlite").mkdir()
    write(tmp_path / "sqlite", "0001_first.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\n")
    write(tmp_path / "sqlite", "0001_second.sql", "-- migrate:up\nSELECT 2;\n-- migrate:down\n")
    with pytest.raises(MigrationError) as info:
        load_migrations("sqlite", root=tmp_path)
    message = str(info.value)
    assert "0001_second.sql" in message and "0001_first.sql" in message
    assert "version 0001 is also used by" in message


def test_real_migrations_parse_and_match_between_dialects():
    sqlite_files = load_migrations("sqlite")
    pg_files = load_migrations("postgresql")
    assert [(m.version, m.name) for m in sqlite_files] == [(m.version, m.name) for m in pg_files]
    assert [m.version for m in sqlite_files] == list(range(1, len(sqlite_files) + 1))
    assert all(m.down for m in sqlite_files + pg_files), "every migration must be reversible"


# ------------------------------------------------------------------ concurrency


def start_migrators(url: str, cwd: Path, count: int = 4, **extra: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-m", "workflow", "migrate", "up"], cwd=cwd,
                         env=cli_env(url, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=CLI_TIMEOUT)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def check_applied_once(url: str, results: list[tuple[int, str, str]]) -> None:
    files = load_migrations(dialect_of(url))
    for code, _out, err in results:
        assert code == 0, results
        assert "Traceback" not in err and "error" not in err.lower(), err
    # Each migration was applied by exactly one process, the others found nothing to do.
    for m in files:
        line = f"applied {m.version:04d}_{m.name}"
        assert sum(out.splitlines().count(line) for _, out, _ in results) == 1, results
    assert [r[0] for r in migration_rows(url)] == [m.version for m in files]
    assert all(table_exists(url, t) for t in APP_TABLES)


def test_postgresql_concurrent_migrators_apply_once(pg_server_url, tmp_path):
    import psycopg
    from conftest import new_pg_schema

    url = new_pg_schema(pg_server_url)
    lock_sql = load_queries("postgresql")["migrations.begin"]
    # Hold the migration lock so that all four processes are certainly contending for it.
    with psycopg.connect(url, connect_timeout=5) as holder:
        holder.execute(lock_sql)
        procs = start_migrators(url, tmp_path)
        try:
            deadline = time.monotonic() + CLI_TIMEOUT
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as watcher:
                while True:
                    waiting = watcher.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    ).fetchone()[0]
                    if waiting == len(procs):
                        break
                    exited = [p.returncode for p in procs if p.poll() is not None]
                    assert not exited, f"a migrator exited before the lock was released: {exited}"
                    assert time.monotonic() < deadline, f"only {waiting} migrators reached the lock"
                    time.sleep(0.05)  # polling for a condition, not a fixed delay
        except BaseException:
            for p in procs:
                p.kill()
                p.wait()
            raise
        holder.rollback()  # releases the transaction-scoped advisory lock
    check_applied_once(url, finish(procs))


def test_postgresql_concurrent_migrators_unblocked(pg_server_url, tmp_path):
    from conftest import new_pg_schema

    url = new_pg_schema(pg_server_url)
    check_applied_once(url, finish(start_migrators(url, tmp_path)))


def test_sqlite_concurrent_migrators_on_fresh_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    check_applied_once(url, finish(start_migrators(url, tmp_path, DB_TIMEOUT_SECONDS="30")))


def test_sqlite_concurrent_migrators_default_timeout(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    check_applied_once(url, finish(start_migrators(url, tmp_path)))


# ------------------------------------------------------------------ unreachable database

UNREACHABLE = {
    "postgresql": "postgresql://bob:topsecret-pw-99@127.0.0.1:1/workflow",
    "sqlite": "sqlite:////nonexistent-dir-for-workflow-tests/workflow.db",
}
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("action", ["up", "down", "current", "history", "status"])
def test_cli_unreachable_database_is_a_clean_error(tmp_path, dialect, action):
    result = subprocess.run(
        [sys.executable, "-m", "workflow", "migrate", action], cwd=tmp_path,
        env=cli_env(UNREACHABLE[dialect], DB_TIMEOUT_SECONDS="2"),
        capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert f"workflow: migrate {action}: database unavailable" in result.stderr
    assert "topsecret-pw-99" not in result.stderr + result.stdout
