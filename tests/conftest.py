"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL comes from WORKFLOW_TEST_PG_URL (default: the local server with
trust auth). A throw-away database is created for the session and each test
module gets its own schema in it. With WORKFLOW_REQUIRE_POSTGRES=1 (as in
`.ci/run`) an unreachable server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from webtest import TestApp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workflow import create_app  # noqa: E402
from workflow_service.config import settings_from_mapping  # noqa: E402
from workflow_service.db import open_database  # noqa: E402
from workflow_service.migrations import Migrator  # noqa: E402

PG_URL = os.environ.get("WORKFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("WORKFLOW_REQUIRE_POSTGRES") == "1"
DIALECTS = ["sqlite", "postgresql"]


def _admin_connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The URL of a throw-away PostgreSQL database for this test session."""
    import psycopg

    try:
        admin = _admin_connect(PG_URL)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable at {PG_URL.split('@')[-1]}: {type(exc).__name__}"
        if REQUIRE_PG:
            pytest.fail(message)
        pytest.skip(message)
    name = f"workflow_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with _admin_connect(PG_URL) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_pg_schema(server_url: str) -> str:
    """Create an empty schema; return a DATABASE_URL whose search_path is it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with _admin_connect(server_url) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{server_url}?options={quote(f'-csearch_path={schema}')}"


def empty_database_url(dialect: str, request, tmp_path_factory) -> str:
    """A URL of an empty, unmigrated database of `dialect`."""
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'workflow.db'}"
    return new_pg_schema(request.getfixturevalue("pg_server_url"))


@pytest.fixture(scope="module", params=DIALECTS)
def database_url(request, tmp_path_factory) -> str:
    """A migrated database, one per test module and dialect."""
    url = empty_database_url(request.param, request, tmp_path_factory)
    db = open_database(settings_from_mapping({"DATABASE_URL": url}))
    Migrator(db).up()
    db.close()
    return url


@pytest.fixture(params=DIALECTS)
def database_kind(request) -> str:
    """`sqlite` or `postgresql`, for tests whose subject makes databases of its own (bench/'s scripts).

    PostgreSQL's server must answer: without one the test skips, or fails under WORKFLOW_REQUIRE_POSTGRES.
    """
    if request.param == "postgresql":
        request.getfixturevalue("pg_server_url")
    return request.param


@pytest.fixture
def dialect(database_url) -> str:
    """`sqlite` or `postgresql`, for the test at hand."""
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


def make_settings(database_url: str, **env: str):
    """Settings for tests, from a DATABASE_URL and extra variables."""
    return settings_from_mapping({"DATABASE_URL": database_url, **env})


def listing_sql(queries, filters: tuple[str, ...], order: str) -> str:
    """The page statement a listing runs (`records.listing_sql`) for filter and cursor (`after.*`)
    fragments given together."""
    from workflow_service.records import listing_sql

    after = tuple(f for f in filters if f.startswith("after."))
    return listing_sql(queries, tuple(f for f in filters if f not in after), after, order)[0]


def hold_writer_gate(path) -> int:
    """Take SQLite's `<database>-writer.lock` as another process's write or checkpoint would
    (db.WriterGate); closing the returned descriptor lets go."""
    import fcntl

    fd = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.fixture
def make_app(database_url):
    """Build WebTest apps on the module's database, emptied first; closed afterwards."""
    built = []

    def build(processors=None, clock=None, **env) -> TestApp:
        extra = {"clock": clock} if clock else {}
        wsgi = create_app(make_settings(database_url, **env), processors=processors, **extra)
        built.append(wsgi)
        return TestApp(wsgi)

    cleanup = create_app(make_settings(database_url))
    with cleanup.db.write() as s:
        s.script("DELETE FROM record_events; DELETE FROM records; DELETE FROM idempotency_keys;")
    cleanup.db.close()
    yield build
    for wsgi in built:
        wsgi.db.close()


@pytest.fixture
def app(make_app) -> TestApp:
    """The app with default settings (no API key)."""
    return make_app()


@pytest.fixture
def create_record(app):
    """POST a record and return its JSON."""

    def create(source="api", category="invoice", payload=None, **kwargs):
        body = {"source": source, "category": category, "payload": payload if payload is not None else {}}
        return app.post_json("/records", body, **kwargs).json

    return create


def _skipped_postgres(config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reports = reporter.stats.get("skipped", []) if reporter else []
    return [r for r in reports if "postgresql" in r.nodeid.lower() or "PostgreSQL" in str(r.longrepr)]


def pytest_sessionfinish(session, exitstatus):
    """With WORKFLOW_REQUIRE_POSTGRES=1, a skipped PostgreSQL test fails the run."""
    if REQUIRE_PG and _skipped_postgres(session.config):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if REQUIRE_PG and _skipped_postgres(config):
        terminalreporter.write_line("FAILED: PostgreSQL tests were skipped but WORKFLOW_REQUIRE_POSTGRES=1", red=True)


def audit_mismatches(db) -> list[dict]:
    """Records whose status is not the to_status of their last event (SPEC: audit integrity),
    and groups whose maintained count is wrong."""
    with db.read(snapshot=True) as s:
        return s.all("audit_mismatches") + s.all("audit_count_mismatches")
