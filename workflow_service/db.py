"""Database access for SQLite (embedded default) and PostgreSQL (psycopg 3).

Both backends expose the same small interface: `read()` and `write()` context
managers yielding a `Session` that runs named statements from `sql/`. Rows come
back as dicts with the same shapes on both (the SQL files make sure of that).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .config import Settings
from .errors import DatabaseUnavailable
from .sqlfiles import Queries, load_queries

log = logging.getLogger("workflow.db")
T = TypeVar("T")


class Session:
    """Runs named statements on one connection inside one unit of work."""

    no_params: tuple | None = None

    def __init__(self, cursor, queries: Queries):
        self._cur = cursor
        self.queries = queries

    def all(self, name: str, params: dict | None = None) -> list[dict]:
        """All rows of statement `name`."""
        return self.all_sql(self.queries[name], params)

    def one(self, name: str, params: dict | None = None) -> dict | None:
        """The first row of statement `name`, or None."""
        return self.one_sql(self.queries[name], params)

    def run(self, name: str, params: dict | None = None) -> int:
        """Execute statement `name`; return the affected row count."""
        self._cur.execute(self.queries[name], params or self.no_params)
        return self._cur.rowcount

    def all_between(self, before: str, name: str, params: dict, after: str) -> list[dict]:
        """All rows of statement `name`, run between statements `before` and `after` (a setting
        and its reset; PostgreSQL's only: worker.claim)."""
        raise NotImplementedError

    def all_sql(self, sql: str, params: dict | None = None) -> list[dict]:
        """All rows of a composed statement (see `Queries.compose`)."""
        raise NotImplementedError

    def one_sql(self, sql: str, params: dict | None = None) -> dict | None:
        """The first row of a composed statement, or None."""
        raise NotImplementedError

    def tuples(self, name: str, params: dict | None = None) -> list[tuple]:
        """All rows of statement `name` as tuples in its column order (see `tuples_sql`)."""
        return self.tuples_sql(self.queries[name], params)

    def tuples_sql(self, sql: str, params: dict | None = None) -> list[tuple]:
        """All rows of a composed statement as tuples in its column order.

        No dict per row: a page of 50 records spent 15 % of its time in Python building them.
        """
        raise NotImplementedError

    def iter_sql(self, sql: str, params: dict | None = None, size: int = 500):
        """Yield the rows of a composed statement in chunks of `size`, never holding them all."""
        raise NotImplementedError

    def script(self, text: str) -> None:
        """Run several `;`-separated statements (migrations)."""
        self._cur.execute(text)


class _Psycopg:
    """The psycopg names used on every statement, imported once, when the first PostgresDatabase is made.

    Not at import time: a SQLite deployment never loads psycopg. Not in each function either:
    an import statement on the hot path cost a get by id about a microsecond each.
    """

    def load(self) -> None:
        import psycopg
        from psycopg.pq import TransactionStatus
        from psycopg.rows import dict_row, tuple_row

        self.connect, self.OperationalError, self.IsolationLevel = (psycopg.connect, psycopg.OperationalError,
                                                                     psycopg.IsolationLevel)
        self.dict_row, self.tuple_row, self.IDLE = dict_row, tuple_row, TransactionStatus.IDLE


_psycopg = _Psycopg()


class _PostgresSession(Session):
    """psycopg's cursors (dict_row) make a new dict of each row.

    `tuples_sql` switches the cursor to tuples and leaves it so: the next statement that wants
    dicts switches it back. Switching back at once made psycopg read the column names of the
    result just fetched, for nothing, on every get by id.
    """

    def _dicts(self):
        cur = self._cur
        if cur.row_factory is not _psycopg.dict_row:
            cur.row_factory = _psycopg.dict_row
        return cur

    def all_sql(self, sql: str, params: dict | None = None) -> list[dict]:
        cur = self._dicts()
        cur.execute(sql, params or None)
        return cur.fetchall()

    def one_sql(self, sql: str, params: dict | None = None) -> dict | None:
        cur = self._dicts()
        cur.execute(sql, params or None)
        return cur.fetchone()

    def tuples_sql(self, sql: str, params: dict | None = None) -> list[tuple]:
        cur = self._cur
        cur.row_factory = _psycopg.tuple_row
        cur.execute(sql, params or None)
        return cur.fetchall()

    def all_between(self, before: str, name: str, params: dict, after: str) -> list[dict]:
        """In one round trip: psycopg's pipeline mode sends the three statements at once."""
        cur, queries = self._dicts(), self.queries
        conn = cur.connection
        with conn.pipeline():
            conn.execute(queries[before])
            cur.execute(queries[name], params)
            conn.execute(queries[after])
        return cur.fetchall()

    def iter_sql(self, sql: str, params: dict | None = None, size: int = 500):
        # A server-side cursor: PostgreSQL sends the rows in chunks (needs a transaction).
        with self._cur.connection.cursor(name="workflow_export") as named:
            named.execute(sql, params or None)
            while rows := named.fetchmany(size):
                yield from rows


def open_database(settings: Settings) -> Database:
    """The Database for `settings.database_url`; connects lazily."""
    if settings.dialect == "sqlite":
        return SQLiteDatabase(settings)
    return PostgresDatabase(settings)


class Database:
    """Common shape of both backends."""

    dialect: str

    def __init__(self, settings: Settings):
        self.settings = settings
        self.queries = load_queries(self.dialect)

    def release_thread(self) -> None:
        """Give back what the calling thread holds (its SQLite connection)."""

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        with self.read() as s:
            s.one("ping")

    def write_grouped(self, work: Callable[[Session], T], records: int = 1) -> T:
        """`work(session)`, which creates `records` records, in a write transaction; return what it returns.

        SQLite commits the calls of concurrent threads together (see `WriteGroup`);
        PostgreSQL runs each in its own transaction, since its writers do not queue.
        """
        with self.write() as s:
            return work(s)

    def write_statement(self, name: str, params: dict) -> int:
        """Run statement `name`, which writes, alone; return its row count.

        PostgreSQL runs it in autocommit: one round trip, no BEGIN and COMMIT.
        """
        return self.write_grouped(lambda s: s.run(name, params))


class _SQLiteSession(Session):
    """sqlite3 hands back tuples; a row becomes a dict here (half the cost of `dict(sqlite3.Row)`)."""

    no_params = ()

    def _names(self) -> list[str]:
        return [column[0] for column in self._cur.description or ()]

    def all_sql(self, sql: str, params: dict | None = None) -> list[dict]:
        self._cur.execute(sql, params or self.no_params)
        names = self._names()
        return [dict(zip(names, row, strict=True)) for row in self._cur.fetchall()]

    def one_sql(self, sql: str, params: dict | None = None) -> dict | None:
        self._cur.execute(sql, params or self.no_params)
        row = self._cur.fetchone()
        return None if row is None else dict(zip(self._names(), row, strict=True))

    def tuples_sql(self, sql: str, params: dict | None = None) -> list[tuple]:
        self._cur.execute(sql, params or self.no_params)
        return self._cur.fetchall()

    def iter_sql(self, sql: str, params: dict | None = None, size: int = 500):
        self._cur.execute(sql, params or self.no_params)
        names = self._names()
        while rows := self._cur.fetchmany(size):
            for row in rows:
                yield dict(zip(names, row, strict=True))

    def script(self, text: str) -> None:
        # sqlite3's executescript() would COMMIT first; run statement by statement instead.
        for statement in split_sqlite_statements(text):
            self._cur.execute(statement)


def has_sql(text: str) -> bool:
    """Whether `text` holds anything but blank lines and `--` comments."""
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def split_sqlite_statements(text: str) -> list[str]:
    """Split a script into complete statements (semicolons in strings and triggers are respected)."""
    statements, current = [], ""
    for piece in text.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if has_sql(current[:-1]):
                statements.append(current)
            current = ""
    return statements


class SQLiteDatabase(Database):
    """A read connection per thread and one write connection per process, reused for every request.

    Writers in one process queue on a lock instead of on SQLite's busy handler,
    whose sleeps (1, 2, 5, 10 ms...) would turn every collision into latency;
    across processes the writer retries BEGIN IMMEDIATE, every 50 µs for the
    first 5 ms and then with pauses growing to 2 ms, until DB_TIMEOUT_SECONDS,
    then gives up with a 503.
    """

    dialect = "sqlite"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.path = settings.database_url[len("sqlite:///") :]
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._writer_pid = 0
        self._checkpointer: Checkpointer | None = None
        self._group: WriteGroup | None = None
        self._gate = WriterGate(self.path + "-writer.lock")

    def write_grouped(self, work: Callable[[Session], T], records: int = 1) -> T:
        group = self._group
        if group is None or group.pid != os.getpid():  # none yet, or the parent's before a fork
            with self._write_lock:
                group = self._group
                if group is None or group.pid != os.getpid():
                    group = self._group = WriteGroup(self)
        return group.run(work, records)

    def _connection(self, role: str = "read") -> sqlite3.Connection:
        """This thread's read connection, or the process's one write connection (under the write lock)."""
        if role == "write":
            if self._writer is None or self._writer_pid != os.getpid():  # none yet, or the parent's
                self._writer, self._writer_pid = self._open(role), os.getpid()
            return self._writer
        conn = getattr(self._local, "read", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._local.read = self._open(role)
            self._local.pid = os.getpid()
        return conn

    def _open(self, role: str) -> sqlite3.Connection:
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            # SQLite would open it read-only, and every connection this process opens to the file
            # while that one lives shares its read-only WAL index: writes would keep failing after
            # the file became writable again (a read-only mount remounted). Open nothing instead.
            log.error("sqlite.connect_failed", extra={"fields": {"error": "the database file is not writable",
                                                                 "path": self.path}})
            raise DatabaseUnavailable()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.settings.db_timeout_seconds,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=role == "read",  # the writer moves between threads, one at a time
            )
            for name in ("pragma.journal_mode", "pragma.synchronous", "pragma.foreign_keys", f"pragma.{role}_cache",
                         "pragma.no_auto_checkpoint"):
                conn.execute(self.queries[name])
            if role == "write":  # set-up above may wait for another process; later BEGINs do not (write())
                conn.execute(self.queries["pragma.temp_store"])
                conn.execute(self.queries["pragma.no_busy_wait"])
        except sqlite3.Error as exc:
            log.error("sqlite.connect_failed", extra={"fields": {"error": str(exc), "path": self.path}})
            raise DatabaseUnavailable() from exc
        return conn

    @contextmanager
    def _unit(self, conn_role: str, begin: str | None, deadline: float | None = None):
        try:
            conn = self._connection(conn_role)
            cur = conn.cursor()
            if begin == "begin_write":
                self._begin_immediate(cur, deadline)
            elif begin:
                cur.execute(self.queries[begin])
            try:
                yield _SQLiteSession(cur, self.queries)
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            if conn.in_transaction:
                conn.commit()
        except sqlite3.OperationalError as exc:
            # Locked past the timeout, disk full, read-only file, missing table...
            log.error("sqlite.unavailable", extra={"fields": {"error": str(exc)}})
            raise DatabaseUnavailable() from exc

    # Another process's write holds the lock. A create's commit takes about 0.3 ms and a 100-record
    # batch's about 2 ms: poll every 50 µs for that long, then back off to 2 ms for long writes.
    # Pauses that grew from the first miss left the lock free for up to a millisecond after each
    # handover (docs/benchmarks.md).
    RETRY_PAUSE_SECONDS = 0.00005
    RETRY_FAST_SECONDS = 0.005
    RETRY_MAX_PAUSE_SECONDS = 0.002

    @classmethod
    def lock_attempts(cls, deadline: float):
        """Yield before each try at a lock another process may hold: at once, then after each pause.

        The pauses (jittered) stay at RETRY_PAUSE_SECONDS for RETRY_FAST_SECONDS, then double up
        to RETRY_MAX_PAUSE_SECONDS; it stops when the next pause would pass `deadline`.
        """
        pause, started = cls.RETRY_PAUSE_SECONDS, time.monotonic()
        yield
        while True:
            now = time.monotonic()
            if now + pause > deadline:
                return
            time.sleep(pause * (0.5 + random.random()))
            if now - started > cls.RETRY_FAST_SECONDS:
                pause = min(pause * 2, cls.RETRY_MAX_PAUSE_SECONDS)
            yield

    def _begin_immediate(self, cur, deadline: float) -> None:
        for _ in self.lock_attempts(deadline):
            try:
                cur.execute(self.queries["begin_write"])
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                busy = exc
        raise busy

    def read(self, snapshot: bool = False):
        """A read; `snapshot=True` keeps several statements consistent."""
        return self._unit("read", "begin_read" if snapshot else None)

    @contextmanager
    def write(self):
        """A write transaction holding the writer gate and SQLite's write lock from the start."""
        deadline = time.monotonic() + self.settings.db_timeout_seconds
        if not self._write_lock.acquire(timeout=self.settings.db_timeout_seconds):
            log.error("sqlite.unavailable", extra={"fields": {"error": "write lock wait timed out"}})
            raise DatabaseUnavailable()
        try:
            self._take_gate(deadline)
            try:
                with self._unit("write", "begin_write", deadline) as session:
                    yield session
            finally:
                self._gate.release()
        finally:
            self._write_lock.release()
        self._wal_grew()

    def _take_gate(self, deadline: float) -> None:
        try:
            taken = self._gate.acquire(deadline)
        except OSError as exc:  # a read-only directory, no space for the lock file
            log.error("sqlite.unavailable", extra={"fields": {"error": f"writer lock file: {exc.strerror}"}})
            raise DatabaseUnavailable() from exc
        if not taken:
            log.error("sqlite.unavailable", extra={"fields": {"error": "writer lock wait timed out"}})
            raise DatabaseUnavailable()

    def _wal_grew(self) -> None:
        checkpointer = self._checkpointer  # read without the lock: a checkpoint may hold it for a while
        if checkpointer is None or checkpointer.pid != os.getpid():  # none yet, or the parent's before a fork
            with self._write_lock:
                checkpointer = self._checkpointer
                if checkpointer is None or checkpointer.pid != os.getpid():
                    checkpointer = self._checkpointer = Checkpointer(self.path, self.queries, self._write_lock,
                                                                     self._gate)
        checkpointer.wake()

    def release_thread(self) -> None:
        """Close the calling thread's read connection; the process's writer and checkpointer stay."""
        conn, self._local.read = getattr(self._local, "read", None), None
        if conn is not None and self._local.pid == os.getpid():
            conn.close()

    def close(self) -> None:
        """Close this thread's read connection and the write connection; stop the checkpointer.

        The next read or write opens what it needs again.
        """
        self.release_thread()
        with self._write_lock:
            writer, self._writer = self._writer, None
            if writer is not None and self._writer_pid == os.getpid():
                writer.close()
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None and checkpointer.pid == os.getpid():
            checkpointer.stop()
            checkpointer.stopped.wait(self.settings.db_timeout_seconds)  # its last checkpoint takes the gate
        with self._write_lock:
            self._gate.close()


class WriterGate:
    """One lock, across processes, that every write transaction and every checkpoint of this service holds.

    SQLite 3.7.0 to 3.51.2 can corrupt a database when a checkpoint starts just as
    another connection's write rewinds the WAL ("the WAL-reset bug", sqlite.org/wal.html;
    fixed in 3.51.3, and Debian 12 ships 3.40.1). A checkpoint that holds SQLite's write
    lock is safe from it, but a PASSIVE checkpoint never takes that lock, and a RESTART
    that cannot get it at once carries on as a PASSIVE one. With this lock taken first,
    no write of ours runs while a checkpoint of ours does (docs/decisions.md). It is
    `flock` on `<database>-writer.lock`; other programs writing the file do not take it.
    Callers hold their process's write lock, so one thread at a time uses it.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd, self._pid = -1, 0

    def acquire(self, deadline: float) -> bool:
        """Take the lock, polling as a waiting writer does (SQLiteDatabase.lock_attempts); False at `deadline`."""
        if self._pid != os.getpid():  # none yet, or the parent's: a child would share the parent's lock through it
            self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), os.getpid()
        for _ in SQLiteDatabase.lock_attempts(deadline):
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
        return False

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, 0


class _Call:
    """One thread's work in a `WriteGroup`, and what came of it."""

    __slots__ = ("work", "records", "done", "result", "error")

    def __init__(self, work: Callable[[Session], T], records: int):
        self.work, self.records, self.done, self.result, self.error = work, records, False, None, None


class WriteGroup:
    """Group commit for one process's SQLite writes.

    A commit writes every page the transaction touched to the WAL: about 17 for
    one record (the table and its indexes, the audit trail, the counts), some
    0.2 ms while every other writer waits. So the thread that finds no commit
    under way leads: once it holds the write lock (and the writer gate, which
    another process's write may hold a while) it takes what the other threads
    have queued by then and runs it all in one transaction, each call inside a
    savepoint, so that a call that raises undoes only its own statements. A
    database error fails the whole group. Alone, a thread writes as it would
    without the group.
    """

    # A savepoint keeps, in memory, the pages that the calls before it had already changed: two
    # 1,000-record batches in one transaction took a worker's peak up by 2-3 MiB (docs/benchmarks.md).
    MAX_RECORDS = 1000

    def __init__(self, db: SQLiteDatabase):
        self.db, self.pid = db, os.getpid()
        self._changed = threading.Condition(threading.Lock())
        self._queue: list[_Call] = []
        self._leading = False

    def run(self, work: Callable[[Session], T], records: int = 1) -> T:
        call = _Call(work, records)
        deadline = time.monotonic() + self.db.settings.db_timeout_seconds
        with self._changed:
            self._queue.append(call)
            while self._leading and not call.done:
                if call in self._queue and time.monotonic() >= deadline:
                    self._queue.remove(call)  # not started: nothing of it is written
                    log.error("sqlite.unavailable", extra={"fields": {"error": "write group wait timed out"}})
                    raise DatabaseUnavailable()
                # A call already taken waits for its leader's commit, which has a deadline of its own.
                self._changed.wait(max(deadline - time.monotonic(), 0.05))
            leads = not call.done
            if leads:
                self._leading = True
        if leads:
            group = [call]
            try:
                self._commit(group)
            finally:
                with self._changed:
                    self._leading = False
                    if call in self._queue:  # the write never began: the queue was not taken
                        self._queue.remove(call)
                    for each in group:
                        each.done = True
                    self._changed.notify_all()
        if call.error is not None:
            raise call.error
        return call.result

    def _commit(self, group: list[_Call]) -> None:
        """Run the leader's call (`group`'s one) and queued ones in one transaction; `group` gets them all.

        The queue is taken once the write lock is held, not before: calls that arrive while
        another process writes join this transaction instead of waiting for one of their own.
        The calls taken create at most MAX_RECORDS records between them (the leader's always
        runs), so that no transaction holds more than one full batch does.
        """
        try:
            with self.db.write() as s:
                with self._changed:
                    records = group[0].records
                    for call in self._queue:
                        if call is not group[0] and records + call.records <= self.MAX_RECORDS:
                            group.append(call)
                            records += call.records
                    self._queue = [call for call in self._queue if call not in group]
                if len(group) == 1:
                    group[0].result = group[0].work(s)
                    return
                for call in group:
                    s.run("savepoint")
                    try:
                        call.result = call.work(s)
                    except sqlite3.Error:
                        raise  # the transaction may be gone with it: fail the group
                    except Exception as exc:
                        s.run("rollback_to_savepoint")
                        call.error = exc
                    s.run("release_savepoint")
        except BaseException as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            if not isinstance(exc, DatabaseUnavailable):  # which was logged where it was raised
                log.error("sqlite.write_group_failed", exc_info=exc)
            for call in group:
                call.result = None
                if call.error is None:  # each thread raises an exception of its own
                    call.error = DatabaseUnavailable()
                    call.error.__cause__ = exc
            if not isinstance(exc, Exception):  # an exit: the leader's thread goes on with it
                raise


class Checkpointer:
    """Copies the WAL back into the database file from a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000
    WAL pages, so one unlucky request pays for copying everybody's pages
    (about 40 % of a 100-record batch's time, docs/benchmarks.md). Connections
    here turn it off, and this thread checkpoints instead: at most once every
    INTERVAL_SECONDS while writes go on, and once more after they stop. Each
    checkpoint holds this process's write lock and the writer gate (WriterGate:
    no write runs meanwhile, in any process of ours), waiting at most
    GATE_WAIT_SECONDS for them, else it tries again later; it syncs the WAL
    to disk before, while writers still go on. A PASSIVE checkpoint
    copies what it can; once the WAL holds RESTART_FRAMES, a RESTART also waits
    up to RESTART_WAIT_SECONDS for readers of old snapshots and rewinds the WAL.
    When a long reader keeps it from finishing, the next RESTART waits
    RESTART_BACKOFF_SECONDS. One per process, started by the first write.
    """

    INTERVAL_SECONDS = 0.25  # each checkpoint holds every writer off (WriterGate): 0.1 s cost 10-20 % of writes
    RESTART_FRAMES = 4000  # a 16 MiB WAL (4 KiB pages)
    GATE_WAIT_SECONDS = 0.05  # this process's writers wait meanwhile
    RESTART_WAIT_SECONDS = 0.05  # for readers, through SQLite's busy handler; every writer waits meanwhile
    RESTART_BACKOFF_SECONDS = 1.0

    def __init__(self, path: str, queries: Queries, write_lock: threading.Lock, gate: WriterGate):
        self.path, self.queries, self.write_lock, self.gate, self.pid = path, queries, write_lock, gate, os.getpid()
        self._conn: sqlite3.Connection | None = None
        self._wanted = threading.Event()
        self._stopping = False
        self._restart_after = 0.0
        self.done = threading.Event()  # set after each checkpoint; tests wait on it
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True).start()

    def wake(self) -> None:
        self.done.clear()
        self._wanted.set()

    def stop(self) -> None:
        """Checkpoint once more and end the thread."""
        self._stopping = True
        self._wanted.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wanted.wait()
            if not self._stopping:
                time.sleep(self.INTERVAL_SECONDS)  # let writes gather: a page written twice is copied once
            self._wanted.clear()
            if not self.checkpoint() and not self._stopping:
                self._wanted.set()  # the gate stayed busy: again after the interval
        if self._conn is not None:
            self._conn.close()
        self.stopped.set()

    def checkpoint(self) -> bool:
        """Copy what the WAL holds into the database file; rewind the WAL once it is long.

        False when the writer gate stayed taken for GATE_WAIT_SECONDS: nothing was done.
        """
        try:
            if self._conn is None:
                # The timeout is SQLite's busy handler: a RESTART's wait for readers.
                self._conn = sqlite3.connect(self.path, timeout=self.RESTART_WAIT_SECONDS, isolation_level=None,
                                             check_same_thread=False)
            self._flush_wal()
            with self.write_lock:
                if not self.gate.acquire(time.monotonic() + self.GATE_WAIT_SECONDS):
                    return False
                try:
                    self._checkpoint()
                finally:
                    self.gate.release()
            self.done.set()
        except (sqlite3.Error, OSError) as exc:  # disk full, file gone: the next write wakes us again
            log.warning("sqlite.checkpoint_failed", extra={"fields": {"error": str(exc)}})
            if self._conn is not None:
                self._conn.close()
            self._conn = None
        return True

    def _flush_wal(self) -> None:
        """Write the WAL's new frames to disk before taking the gate.

        A checkpoint first syncs the WAL (synchronous=NORMAL leaves that to it), which under
        100-record batches meant some 3,000 frames to disk while every writer waited; synced
        here, writers go on meanwhile and the checkpoint's own sync finds little left. Opening
        and closing the file is safe: SQLite's POSIX locks are on the database and `-shm`
        files, which closing another descriptor of would release, never on the WAL.
        """
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _checkpoint(self) -> None:
        _busy, wal_frames, _copied = self._conn.execute(self.queries["wal_checkpoint"]).fetchone()
        if wal_frames >= self.RESTART_FRAMES and time.monotonic() >= self._restart_after:
            # SQLite rewinds only a WAL that was copied in full and that no reader still
            # needs; RESTART waits for those readers, so that the next write starts at the top.
            busy, _, _ = self._conn.execute(self.queries["wal_restart"]).fetchone()
            if busy:  # a reader still uses an old snapshot (a CSV export): let writers be a while
                self._restart_after = time.monotonic() + self.RESTART_BACKOFF_SECONDS


def postgres_conninfo(url: str, timeout: float) -> tuple[str, int, int]:
    """Split the old docs' `pool_size`/`max_overflow` off a PostgreSQL URL."""
    parts = urlsplit(url)
    scheme = "postgresql"
    params, pool_size, max_overflow = [], 10, 20
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "pool_size":
            pool_size = int(value)
        elif name == "max_overflow":
            max_overflow = int(value)
        else:
            params.append((name, value))
    if not any(name == "connect_timeout" for name, _ in params):
        params.append(("connect_timeout", str(max(2, round(timeout)))))
    conninfo = urlunsplit((scheme, parts.netloc, parts.path, urlencode(params), ""))
    return conninfo, max(1, pool_size), max(0, max_overflow)


class ConnectionPool:
    """A small LIFO pool of psycopg connections for one process.

    Why not psycopg_pool: when the server refuses connections, its clients wait
    the whole pool timeout while it retries in the background; here a refused
    connect fails at once (a fast 503), and the next request simply connects
    again once the server is back. A connection idle for more than
    `check_after` seconds is checked before use; a connection error discards
    every idle connection, since after a server restart they are all dead.
    """

    def __init__(self, conninfo: str, max_size: int, timeout: float, check_after: float = 1.0):
        self.conninfo, self.timeout, self.check_after = conninfo, timeout, check_after
        self._idle: list[tuple[object, float]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)

    def _connect(self):
        return _psycopg.connect(self.conninfo, autocommit=True, row_factory=_psycopg.dict_row)

    def _healthy(self, conn, idle_since: float) -> bool:
        if conn.closed:
            return False
        if time.monotonic() - idle_since < self.check_after:
            return True
        try:
            conn.execute("")  # one round trip: is the server still there?
            return True
        except Exception:
            conn.close()
            return False

    def getconn(self):
        """A connection, reused when possible; raises DatabaseUnavailable when none can be had."""
        if not self._slots.acquire(timeout=self.timeout):
            raise DatabaseUnavailable("all database connections are busy, try again later")
        try:
            while True:
                with self._lock:
                    item = self._idle.pop() if self._idle else None
                if item is None:
                    return self._connect()
                if self._healthy(*item):
                    return item[0]
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn, broken: bool = False) -> None:
        """Give a connection back; a broken one is closed with every idle one."""
        try:
            if broken or conn.closed or conn.pgconn.transaction_status != _psycopg.IDLE:
                conn.close()
                if broken:
                    self.discard_idle()
            else:
                with self._lock:
                    self._idle.append((conn, time.monotonic()))
        finally:
            self._slots.release()

    def discard_idle(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


class PostgresDatabase(Database):
    """A connection pool per process, created on first use after fork."""

    dialect = "postgresql"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        _psycopg.load()
        self.conninfo, self.pool_size, self.max_overflow = postgres_conninfo(
            settings.database_url, settings.db_timeout_seconds
        )
        self._pool: ConnectionPool | None = None
        self._pid = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool:
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    # A pool inherited through fork belongs to the parent: never touch its sockets.
                    self._pool = ConnectionPool(self.conninfo, self.pool_size + self.max_overflow,
                                                self.settings.db_timeout_seconds)
                    self._pid = os.getpid()
        return self._pool

    @contextmanager
    def _unit(self, mode: str | None):
        """A pooled connection for one unit of work: `mode` None is autocommit (one statement),
        "write" a read-committed transaction, "snapshot" a repeatable-read, read-only one."""
        pool = self._get_pool()
        try:
            conn = pool.getconn()
        except _psycopg.OperationalError as exc:
            log.error("postgresql.unavailable", extra={"fields": {"error": type(exc).__name__}})
            raise DatabaseUnavailable() from exc
        broken = False
        try:
            with conn.cursor() as cur:
                if mode:
                    # psycopg's BEGIN carries these: one round trip instead of BEGIN, then SET TRANSACTION.
                    snapshot = mode == "snapshot"
                    conn.isolation_level = _psycopg.IsolationLevel.REPEATABLE_READ if snapshot else None
                    conn.read_only = True if snapshot else None
                    with conn.transaction():
                        yield _PostgresSession(cur, self.queries)
                else:
                    yield _PostgresSession(cur, self.queries)
        except _psycopg.OperationalError as exc:
            # A server that went away (no SQLSTATE, or a lost connection's class 08 or 57P) takes the
            # idle connections with it; a statement it refused on a live connection (a lock or
            # statement timeout) is a 503 too, but the connection goes back to the pool.
            broken = conn.broken or exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P"))
            log.log(logging.ERROR if broken else logging.WARNING, "postgresql.unavailable",
                    extra={"fields": {"error": type(exc).__name__}})
            raise DatabaseUnavailable() from exc
        finally:
            pool.putconn(conn, broken=broken or conn.broken)

    def read(self, snapshot: bool = False):
        """A read; `snapshot=True` runs in one repeatable-read transaction."""
        return self._unit("snapshot" if snapshot else None)

    def write(self):
        """A read-committed write transaction (rows are locked explicitly)."""
        return self._unit("write")

    def write_statement(self, name: str, params: dict) -> int:
        with self._unit(None) as s:  # one statement is a transaction of its own
            return s.run(name, params)

    def close(self) -> None:
        """Close the idle connections of this process."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.discard_idle()
        self._pool = None
