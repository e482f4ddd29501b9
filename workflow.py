"""The workflow service's front door.

- `create_app(settings=None, processors=None)` builds a WSGI app; nothing is
  shared between two apps in one process.
- `app` is the module-level app for `gunicorn workflow:app`, built on first
  access from the environment and `.env`.
- `python -m workflow serve | migrate ... | worker | cleanup | import FILE | audit` is the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import falcon

from workflow_service.config import ConfigError, Settings, load_settings
from workflow_service.dashboard import Dashboard
from workflow_service.db import Database, open_database
from workflow_service.errors import DatabaseUnavailable
from workflow_service.middleware import APIKeyAuth, RequestContext, configure_logging, handle_error
from workflow_service.openapi import DocsAsset, DocsPage, OpenAPIDocument
from workflow_service.records import (
    RecordBatch,
    RecordCollection,
    RecordEvents,
    RecordItem,
    RecordProcess,
    RecordRetry,
)
from workflow_service.reports import Summary, Timeseries
from workflow_service.states import ProcessorRegistry, RetryPolicy, TransientError
from workflow_service.timeutil import utc_now_text

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("workflow.cli")
__all__ = ["TransientError", "create_app", "main"]  # and the lazy `app`


class Health:
    """`GET /health`: is the database reachable?"""

    def __init__(self, db: Database):
        self.db = db

    def on_get(self, req, resp):
        try:
            self.db.ping()
        except DatabaseUnavailable as exc:
            resp.status = falcon.HTTP_503
            # The class name only: driver messages can carry host, user or password.
            reason = type(exc.__cause__).__name__ if exc.__cause__ else "DatabaseUnavailable"
            resp.media = {"status": "unhealthy", "database": "disconnected", "error": reason}
            return
        resp.media = {"status": "healthy", "database": "connected"}


class Version:
    """`GET /version`."""

    def __init__(self, settings: Settings):
        self.body = {"version": settings.app_version, "commit": settings.git_commit,
                     "environment": settings.app_env}

    def on_get(self, req, resp):
        resp.media = self.body


class WorkflowApp(falcon.App):
    """A falcon.App that also exposes its `db` and `settings` to embedders and tests."""

    db: Database
    settings: Settings


def build_registry(settings: Settings, processors: dict | None = None) -> ProcessorRegistry:
    """Processors for one app or worker: category schemas, embedder functions, retry policy."""
    return ProcessorRegistry(
        processors,
        Path(settings.category_schemas_dir),
        RetryPolicy(max_attempts=settings.max_attempts, base_seconds=settings.retry_base_seconds),
    )


def create_app(settings: Settings | None = None, processors: dict | None = None,
               db: Database | None = None, clock: Callable[[], str] = utc_now_text) -> WorkflowApp:
    """Build the WSGI app: routes, middleware and error rendering.

    `clock` returns the current UTC time in the stored form; tests pass a fake.
    """
    settings = settings or load_settings()
    db = db or open_database(settings)
    registry = build_registry(settings, processors)

    middleware = [RequestContext(), APIKeyAuth(settings.api_keys)]
    if settings.cors_origins:  # off unless configured
        middleware.append(falcon.CORSMiddleware(
            allow_origins="*" if "*" in settings.cors_origins else list(settings.cors_origins),
            expose_headers=["X-Request-ID", "Location", "Idempotent-Replayed"]))
    app = WorkflowApp(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True  # /records/ answers like /records
    app.req_options.auto_parse_qs_csv = False
    app.add_error_handler(Exception, handle_error)
    app.add_error_handler(falcon.HTTPError, handle_error)

    app.add_route("/health", Health(db))
    app.add_route("/version", Version(settings))
    app.add_route("/records", RecordCollection(db, settings.max_body_bytes, now=clock))
    app.add_route("/records/batch", RecordBatch(db, settings.max_body_bytes, now=clock))
    app.add_route("/records/{record_id}", RecordItem(db))
    app.add_route("/records/{record_id}/process", RecordProcess(db, registry, now=clock))
    app.add_route("/records/{record_id}/retry", RecordRetry(db, now=clock))
    app.add_route("/records/{record_id}/events", RecordEvents(db))
    app.add_route("/reports/summary", Summary(db, now=clock))
    app.add_route("/reports/timeseries", Timeseries(db, now=clock))
    app.add_route("/dashboard", Dashboard(db, settings.project_name, now=clock))
    app.add_route("/openapi.json", OpenAPIDocument(app, settings))
    app.add_route("/docs", DocsPage())
    app.add_route("/docs/assets/{name}", DocsAsset())

    app.db, app.settings = db, settings
    return app


def _load_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"workflow: configuration error: {exc}\n")
        raise SystemExit(2) from None


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas() -> None:
    """Have this process's threads share MALLOC_ARENAS glibc malloc arenas; without glibc, nothing.

    glibc gives each new thread an arena of its own, up to 8 per core, and keeps
    what a thread frees in that thread's arena. A gunicorn worker's four threads
    each grew theirs rendering batches, and the worker kept all of it: on SQLite,
    53.5 MiB at its peak after 100-record batches, 48 with two arenas, 46 with
    one (docs/benchmarks.md). Two, not one: with one, PostgreSQL batches (libpq
    allocates outside the GIL) were slower in some runs. Set by the served app
    (`workflow:app`), before its threads start; an application that embeds
    `create_app` keeps its own allocator settings.
    """
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


def __getattr__(name: str):
    # `gunicorn workflow:app` reads this; importing create_app builds nothing.
    if name == "app":
        limit_malloc_arenas()
        settings = _load_or_exit()
        configure_logging(settings.log_level)
        try:
            processors = load_processors(os.environ.get("WORKFLOW_PROCESSORS"))
            globals()["app"] = create_app(settings, processors=processors)
        except ConfigError as exc:
            sys.stderr.write(f"workflow: configuration error: {exc}\n")
            raise SystemExit(2) from None
        return globals()["app"]
    raise AttributeError(name)


# ------------------------------------------------------------------ commands


def cmd_serve(args, settings: Settings) -> int:
    """Apply pending migrations, then exec gunicorn on this module's `app`."""
    if args.processors:
        os.environ["WORKFLOW_PROCESSORS"] = args.processors
    if args.reuse_port:
        problem = _port_problem(args.host, args.port)
        if problem:
            sys.stderr.write(f"workflow: serve: {problem}\n")
            return 1
    if not args.no_migrate:
        from workflow_service.migrations import MigrationError, Migrator

        db = open_database(settings)
        try:
            for m in Migrator(db).up():
                log.info("migrate.applied", extra={"fields": {"version": m.version, "name": m.name}})
        except MigrationError as exc:
            sys.stderr.write(f"workflow: serve: migrations: {exc}\n")
            return 1
        finally:
            db.close()
    argv = [
        sys.executable, "-m", "gunicorn", "workflow:app",
        "--config", "python:workflow_service.gunicorn_conf",
        "--bind", f"{args.host}:{args.port}",
        "--workers", str(args.workers or settings.web_concurrency),
        "--chdir", str(ROOT),
        *worker_options(args),
        # gunicorn's largest request line (its default is 4,094 bytes; the old service took longer).
        "--limit-request-line", "8190",
        "--timeout", "30",
        "--graceful-timeout", "20",
        "--log-level", "warning",
    ]
    sys.stdout.flush()
    # glibc gives each thread that allocates its own malloc arena, kept after the request;
    # two arenas per worker cut the peak RSS of a batch-heavy worker by about 6 MiB (docs/decisions.md).
    env = dict(os.environ)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def worker_options(args) -> list[str]:
    """How `serve` (parsed `args`) has gunicorn run its workers; bench/run.py runs its ceiling alike."""
    options = [
        # Threads: a long CSV export or a slow client occupies a thread, not the worker, and the
        # worker keeps answering gunicorn's heartbeat (a sync worker would be killed at --timeout).
        "--worker-class", "gthread",
        "--threads", str(args.threads),
        "--keep-alive", str(args.keep_alive),
    ]
    if args.reuse_port:
        # A listening socket per worker: the kernel spreads new connections evenly over the workers,
        # where with one shared socket a worker could win most kept-alive clients (docs/decisions.md).
        options.append("--reuse-port")
    return options


def _port_problem(host: str, port: int) -> str | None:
    """Why `serve` cannot take host:port with a socket per worker; None when it can.

    SO_REUSEPORT would let a second server share a port another one already
    serves, splitting its clients; bind once without it to refuse that instead.
    """
    import socket

    if port == 0:
        return "--port 0 would give each worker a port of its own; choose a port, or use --no-reuse-port"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def cmd_migrate(args, settings: Settings) -> int:
    """`migrate up | down [N] | current | history | status`."""
    from workflow_service.migrations import MigrationError, Migrator

    db = open_database(settings)
    try:
        migrator = Migrator(db)
        if args.action == "up":
            done = migrator.up()
            for m in done:
                print(f"applied {m.version:04d}_{m.name}")
            if not done:
                print("nothing to apply: the database is up to date")
        elif args.action == "down":
            done = migrator.down(args.steps if args.steps is not None else 1)
            for m in done:
                print(f"rolled back {m.version:04d}_{m.name}")
            if not done:
                print("nothing to roll back")
        elif args.action == "current":
            applied = migrator.applied()
            print(f"{applied[-1]['version']:04d}_{applied[-1]['name']}" if applied else "none")
        elif args.action == "history":
            for row in migrator.applied():
                print(f"{row['version']:04d}_{row['name']}  applied {row['applied_at']}  sha256 {row['checksum'][:12]}")
        else:
            for row in migrator.status():
                state = "pending" if not row["applied_at"] else f"applied {row['applied_at']}"
                if row["edited"]:
                    state = "EDITED after it was applied"
                print(f"{row['version']:04d}_{row['name']}  {state}")
    except MigrationError as exc:
        sys.stderr.write(f"workflow: migrate {args.action}: {exc}\n")
        return 1
    finally:
        db.close()
    return 0


def load_processors(spec: str | None) -> dict | None:
    """Import `module:NAME`, a dict (or a function returning one) of category -> processor.

    Used by `worker --processors` and, through WORKFLOW_PROCESSORS, by the
    module-level `app` that `serve` and gunicorn load.
    """
    if not spec:
        return None
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"WORKFLOW_PROCESSORS must look like module:NAME, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        processors = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"WORKFLOW_PROCESSORS {spec!r} cannot be loaded: {exc}") from None
    if callable(processors):
        processors = processors()
    if not isinstance(processors, dict):
        raise ConfigError(f"WORKFLOW_PROCESSORS {spec!r} is not a dict of category -> processor")
    return processors


def cmd_worker(args, settings: Settings) -> int:
    """Drain pending records, continuously or `--once`; SIGTERM finishes the batch in hand."""
    import signal
    import threading

    from workflow_service.worker import Worker, run_workers

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    db = open_database(settings)
    worker = Worker(db, args.registry, batch_size=args.batch_size,
                    idempotency_ttl_hours=settings.idempotency_ttl_hours)
    try:
        totals = run_workers(worker, concurrency=args.concurrency, once=args.once,
                             poll_interval=args.poll_interval, stop=stop)
    except DatabaseUnavailable:
        sys.stderr.write("workflow: worker: database unavailable\n")
        return 1
    finally:
        db.close()
    if args.once:
        print(json.dumps({"claimed": totals.claimed, "processed": totals.processed, "failed": totals.failed,
                          "retried_later": totals.retried_later}))
    return 0


def cmd_cleanup(args, settings: Settings) -> int:
    """Expire idempotency keys older than IDEMPOTENCY_TTL_HOURS; fold the counts' shards."""
    from workflow_service.idempotency import expire
    from workflow_service.reports import fold_counts

    db = open_database(settings)
    try:
        print(f"expired {expire(db, settings.idempotency_ttl_hours)} idempotency keys")
        try:
            folded = fold_counts(db)
        except DatabaseUnavailable:
            sys.stderr.write("workflow: cleanup: counts not folded (a shard's lock was held over a second,"
                             " or the database is unavailable); run it again\n")
            return 1
        if folded:
            print(f"folded the counts' shards: one row for each of {folded} combinations")
    except DatabaseUnavailable:
        sys.stderr.write("workflow: cleanup: database unavailable\n")
        return 1
    finally:
        db.close()
    return 0


def cmd_import(args, settings: Settings) -> int:
    """Validate a CSV/TSV/JSON/NDJSON file, then import it in batches with progress."""
    from workflow_service.importer import MAX_REPORTED, ImportFailed, import_file

    path = Path(args.file)
    if not path.is_file():
        sys.stderr.write(f"workflow: import: no such file: {path}\n")
        return 2
    db = open_database(settings)
    try:
        done = import_file(db, path, fmt=args.format, batch_size=args.batch_size,
                           progress=lambda n, total: sys.stderr.write(f"imported {n}/{total} records\n"))
    except ImportFailed as exc:
        sys.stderr.write(f"workflow: import: nothing imported, {len(exc.problems)} problem(s):\n")
        for line in exc.problems[:MAX_REPORTED]:
            sys.stderr.write(f"  {line}\n")
        if len(exc.problems) > MAX_REPORTED:
            sys.stderr.write(f"  ... and {len(exc.problems) - MAX_REPORTED} more\n")
        return 1
    except DatabaseUnavailable:
        sys.stderr.write("workflow: import: database unavailable\n")
        return 1
    finally:
        db.close()
    print(f"imported {done} records from {path.name}")
    return 0


def cmd_audit(args, settings: Settings) -> int:
    """Check that every record's status is the to_status of its last audit event."""
    db = open_database(settings)
    try:
        with db.read(snapshot=True) as s:
            mismatches = s.all("audit_mismatches")
            miscounted = s.all("audit_count_mismatches")
    except DatabaseUnavailable:
        sys.stderr.write("workflow: audit: database unavailable\n")
        return 1
    finally:
        db.close()
    for row in mismatches:
        print(f"{row['record_id']}: status {row['status']}, last event {row['last_event']}")
    for row in miscounted:
        print(f"counts: {row['category']}/{row['source']}/{row['status']}: {row['actual']} records, "
              f"counted {row['counted']}")
    print(f"audit: {len(mismatches)} record(s) inconsistent" if mismatches else "audit: every record matches its trail")
    print(f"audit: {len(miscounted)} count(s) wrong" if miscounted else "audit: the maintained counts are exact")
    return 1 if mismatches or miscounted else 0


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be greater than 0")
        return value

    return parse


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError("must be 0 or more")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m workflow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply migrations, then serve with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=_positive(int), help="gunicorn workers (default: WEB_CONCURRENCY, 2)")
    serve.add_argument("--threads", type=_positive(int), default=4, help="threads per worker (gthread)")
    serve.add_argument("--keep-alive", type=_non_negative(int), default=5, metavar="SECONDS",
                       help="keep idle client connections open this long (default 5; 0: one request per "
                            "connection, which spreads few clients evenly over the workers; docs/decisions.md)")
    serve.add_argument("--reuse-port", action=argparse.BooleanOptionalAction, default=True,
                       help="a listening socket per worker, so that clients spread evenly over the workers "
                            "(default; --no-reuse-port: one shared socket; docs/decisions.md)")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations first")
    serve.add_argument("--processors", metavar="MODULE:NAME",
                       help="a dict (or a function returning one) of category -> processor")

    migrate = commands.add_parser("migrate", help="apply, roll back or inspect migrations")
    migrate.add_argument("action", choices=["up", "down", "current", "history", "status"])
    migrate.add_argument("steps", nargs="?", type=int, help="for down: how many (default 1)")

    worker = commands.add_parser("worker", help="process pending records; safe to run many at once")
    worker.add_argument("--once", action="store_true", help="drain what is eligible now, then exit")
    worker.add_argument("--batch-size", type=_positive(int), default=50)
    worker.add_argument("--concurrency", type=_positive(int), default=1, help="threads in this process")
    worker.add_argument("--poll-interval", type=_positive(float), default=1.0, help="seconds between empty polls")
    worker.add_argument("--processors", metavar="MODULE:NAME",
                        help="a dict (or a function returning one) of category -> processor")

    commands.add_parser("cleanup", help="expire idempotency keys older than IDEMPOTENCY_TTL_HOURS; "
                        "fold the counts' shards (PostgreSQL)")

    commands.add_parser("audit", help="check every record's status against its audit trail")

    importer = commands.add_parser("import", help="import records from a CSV, TSV, JSON or NDJSON file")
    importer.add_argument("file")
    importer.add_argument("--format", choices=["csv", "tsv", "json", "ndjson"],
                          help="default: from the file name, else detected")
    importer.add_argument("--batch-size", type=_positive(int), default=1000)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code."""
    args = build_parser().parse_args(argv)
    settings = _load_or_exit()
    # SPEC: logs are JSON lines on stdout; one-shot commands keep stdout for their answer. The worker
    # writes its lines a few at a time, as the served app does; `serve` execs gunicorn, which would
    # drop lines still waiting, and the other commands log little.
    configure_logging(settings.log_level, stream=sys.stdout if args.command in ("serve", "worker") else sys.stderr,
                      batch_lines=args.command == "worker")
    try:
        # A broken category schema or processor module stops every command at start-up;
        # `worker` runs with this registry, `serve`'s workers build theirs from the same spec.
        spec = getattr(args, "processors", None) or os.environ.get("WORKFLOW_PROCESSORS")
        args.registry = build_registry(settings, load_processors(spec))
    except ConfigError as exc:
        sys.stderr.write(f"workflow: configuration error: {exc}\n")
        return 2
    if args.command == "serve":
        return cmd_serve(args, settings)
    if args.command == "migrate":
        if args.steps is not None and (args.action != "down" or args.steps < 1):
            sys.stderr.write("workflow: only `migrate down N` takes a count, and N must be at least 1\n")
            return 2
        return cmd_migrate(args, settings)
    if args.command == "worker":
        return cmd_worker(args, settings)
    if args.command == "cleanup":
        return cmd_cleanup(args, settings)
    if args.command == "import":
        return cmd_import(args, settings)
    if args.command == "audit":
        return cmd_audit(args, settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
