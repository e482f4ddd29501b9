"""Hand-written SQL migrations: `sql/migrations/<dialect>/NNNN_name.sql`.

Each file has one `-- migrate:up` and one `-- migrate:down` section. Applied
migrations are recorded in `schema_migrations` with a SHA-256 checksum of the
file. Every step runs in its own transaction that first takes a lock
(PostgreSQL advisory lock, SQLite write lock) and re-reads what is applied, so
any number of concurrent migrators apply each migration exactly once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .db import Database, has_sql
from .errors import DatabaseUnavailable
from .sqlfiles import SQL_DIR
from .timeutil import utc_now_text

FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
UP, DOWN = "-- migrate:up", "-- migrate:down"


class MigrationError(Exception):
    """A migration file or the applied history is not as it must be."""


@dataclass(frozen=True)
class Migration:
    """One migration file, parsed."""

    version: int
    name: str
    up: str
    down: str
    checksum: str
    path: Path


def parse_migration(path: Path) -> Migration:
    """Parse and check one migration file; errors say `file:line` and what to write."""
    match = FILE_RE.match(path.name)
    if not match:
        raise MigrationError(f"{path}: name migration files NNNN_lower_case_name.sql, e.g. 0002_add_index.sql")
    data = path.read_bytes()
    sections: dict[str, list[str]] = {}
    current = None
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        marker = line.strip()
        if marker in (UP, DOWN):
            if marker in sections:
                raise MigrationError(f"{path}:{number}: a second '{marker}' section; keep exactly one")
            if marker == DOWN and UP not in sections:
                raise MigrationError(f"{path}:{number}: '{DOWN}' comes before '{UP}'; put the up section first")
            current = sections.setdefault(marker, [])
        elif current is not None:
            current.append(line)
        elif marker and not marker.startswith("--"):
            raise MigrationError(f"{path}:{number}: SQL before '{UP}'; start the file with comments, then '{UP}'")
    for marker in (UP, DOWN):
        if marker not in sections:
            raise MigrationError(f"{path}: no '{marker}' section; add a line '{marker}' followed by its SQL")
    up = "\n".join(sections[UP]).strip()
    if not has_sql(up):
        raise MigrationError(f"{path}: the '{UP}' section is empty")
    return Migration(
        version=int(match.group(1)),
        name=match.group(2),
        up=up,
        down="\n".join(sections[DOWN]).strip(),
        checksum=hashlib.sha256(data).hexdigest(),
        path=path,
    )


def load_migrations(dialect: str, root: Path = SQL_DIR / "migrations") -> list[Migration]:
    """All migrations of a dialect, in version order."""
    migrations = [parse_migration(p) for p in sorted((root / dialect).glob("*.sql"))]
    seen: dict[int, Migration] = {}
    for m in migrations:
        if m.version in seen:
            raise MigrationError(f"{m.path}: version {m.version:04d} is also used by {seen[m.version].path.name}")
        seen[m.version] = m
    return migrations


class Migrator:
    """Applies and rolls back migrations on one database."""

    def __init__(self, db: Database, migrations: list[Migration] | None = None,
                 now: Callable[[], str] = utc_now_text):
        self.db = db
        self.migrations = load_migrations(db.dialect) if migrations is None else migrations
        self.by_version = {m.version: m for m in self.migrations}
        self.now = now

    @contextmanager
    def _locked(self):
        """A write transaction holding the migration lock, with the history table present."""
        try:
            with self.db.write() as s:
                s.run("migrations.begin")
                s.run("migrations.create_table")
                yield s
        except DatabaseUnavailable as exc:
            raise MigrationError(f"database unavailable: {_reason(exc.__cause__ or exc)}") from exc

    def applied(self) -> list[dict]:
        """Rows of `schema_migrations`, oldest first."""
        with self._locked() as s:
            return s.all("migrations.applied")

    def _check(self, applied: list[dict]) -> None:
        for row in applied:
            m = self.by_version.get(row["version"])
            if m is None:
                raise MigrationError(
                    f"migration {row['version']:04d}_{row['name']} is applied but its file is missing; "
                    "restore the file from version control"
                )
            if m.checksum != row["checksum"]:
                raise MigrationError(
                    f"{m.path.name} was edited after it was applied (checksum differs); "
                    "restore the applied version and put the change in a new migration"
                )

    def _step(self, choose: Callable[[list[dict]], tuple[Migration, str] | None]) -> Migration | None:
        """One locked transaction: re-read the history, pick a step, run it."""
        with self._locked() as s:
            applied = s.all("migrations.applied")
            self._check(applied)
            step = choose(applied)
            if step is None:
                return None
            migration, direction = step
            try:
                s.script(migration.up if direction == "up" else migration.down)
            except Exception as exc:
                raise MigrationError(f"{migration.path.name} ({direction}) failed: {_reason(exc)}") from exc
            if direction == "up":
                s.run("migrations.record", {"version": migration.version, "name": migration.name,
                                            "checksum": migration.checksum, "applied_at": self.now()})
            else:
                s.run("migrations.forget", {"version": migration.version})
            return migration

    def up(self) -> list[Migration]:
        """Apply every pending migration, oldest first; return those this call applied."""
        done = []

        def next_pending(applied):
            versions = {row["version"] for row in applied}
            pending = [m for m in self.migrations if m.version not in versions]
            return (pending[0], "up") if pending else None

        while (m := self._step(next_pending)) is not None:
            done.append(m)
        return done

    def down(self, steps: int = 1) -> list[Migration]:
        """Roll back the newest `steps` applied migrations; return those rolled back."""
        done = []

        def newest_applied(applied):
            return (self.by_version[applied[-1]["version"]], "down") if applied else None

        for _ in range(steps):
            m = self._step(newest_applied)
            if m is None:
                break
            done.append(m)
        return done

    def status(self) -> list[dict]:
        """Every known migration with `applied_at` (None when pending) and whether it was edited."""
        applied = {row["version"]: row for row in self.applied()}
        return [
            {
                "version": m.version,
                "name": m.name,
                "applied_at": applied[m.version]["applied_at"] if m.version in applied else None,
                "edited": m.version in applied and applied[m.version]["checksum"] != m.checksum,
            }
            for m in self.migrations
        ]


def _reason(exc: BaseException) -> str:
    """An exception as one line, without connection details."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
