"""Helpers for the fault-injection tests (`tests/test_faults.py`).

- `LoadGenerator`: a few client threads, bounded by a deadline and a request
  count, that create records (each payload carries a unique token), create
  batches, process created records and ask GET /health, recording status,
  latency, tokens and ids of every request.
- `PgCluster`: a throw-away PostgreSQL cluster (initdb + pg_ctl) on its own
  port and socket directory, so a test can stop and restart *its* server
  without touching the shared one.
- `HOLD_PROCESSORS`: a processor a test can "arm" so that the process running
  it stops inside its write transaction until it is killed (SIGKILL
  mid-transaction, deterministically).
- `check_writes`: looks every token up in the database and checks that no
  acknowledged write is missing and nothing is half-written or applied twice.
- small /proc helpers: gunicorn worker pids, their TCP connections.

Everything talks to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

try:  # imported by pytest as `faultutil`, by servers and workers as `tests.faultutil`
    from serverutil import ROOT, TCP_ESTABLISHED, free_port, request, service_env, tcp_sockets
except ImportError:  # pragma: no cover - inside a server or worker process
    from tests.serverutil import ROOT, TCP_ESTABLISHED, free_port, request, service_env, tcp_sockets

FAULT_PROCESSORS = "tests.faultutil:HOLD_PROCESSORS"
HOLD_CATEGORY = "held"

# ------------------------------------------------------------------ hold processor

_calls_in_this_process = 0


def hold(payload: dict, record: dict) -> dict:
    """Built-in-like result; when `$FAULT_HOLD_DIR/arm` exists, stop inside the transaction.

    After FAULT_HOLD_AFTER calls in this process (default 0), an armed call writes
    `held-<pid>` (content: the record id) and waits, polling, until `arm` is removed
    or 30 s pass. The test kills the process while it waits: its transaction is open.
    """
    global _calls_in_this_process
    _calls_in_this_process += 1
    folder = os.environ.get("FAULT_HOLD_DIR")
    after = int(os.environ.get("FAULT_HOLD_AFTER", "0"))
    if folder and _calls_in_this_process > after and os.path.exists(os.path.join(folder, "arm")):
        marker = Path(folder, f"held-{os.getpid()}")
        partial = Path(folder, f".partial-{os.getpid()}")
        partial.write_text(record["id"])
        partial.replace(marker)  # atomic: a reader never sees an empty marker
        deadline = time.monotonic() + 30
        while os.path.exists(os.path.join(folder, "arm")) and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting to be killed; released when the test disarms
        marker.unlink(missing_ok=True)
    return {"score": 1.0, "classification": "held"}


HOLD_PROCESSORS = {HOLD_CATEGORY: hold}


def wait_for_held(folder: Path, pids: set[int] | None, timeout: float) -> tuple[int, str] | None:
    """Poll `folder` for a `held-<pid>` marker (of one of `pids` if given); (pid, record id) or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for marker in folder.glob("held-*"):
            pid = int(marker.name.split("-", 1)[1])
            if pids is None or pid in pids:
                try:
                    rid = marker.read_text()
                except FileNotFoundError:
                    continue
                if rid:
                    return pid, rid
        time.sleep(0.01)
    return None


# ------------------------------------------------------------------ processes


def gunicorn_workers(master_pid: int) -> set[int]:
    """The pids of the gunicorn master's children (its workers)."""
    try:
        text = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def wait_for_workers(master_pid: int, count: int, timeout: float, exclude: set[int] = frozenset()) -> set[int]:
    """Poll until the master has `count` workers, none of them in `exclude`; return them."""
    deadline = time.monotonic() + timeout
    workers: set[int] = set()
    while time.monotonic() < deadline:
        workers = gunicorn_workers(master_pid)
        if len(workers) == count and not workers & exclude:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"gunicorn master {master_pid} has workers {workers}, wanted {count} new ones")


def tcp_peers(pid: int, remote_port: int) -> int:
    """How many ESTABLISHED TCP connections process `pid` holds to 127.0.0.1:`remote_port`."""
    return len(tcp_sockets(pid, TCP_ESTABLISHED, remote_port=remote_port))


def worker_command(*extra: str) -> list[str]:
    """`python -m workflow worker` with the hold processor."""
    return [sys.executable, "-m", "workflow", "worker", "--processors", FAULT_PROCESSORS, *extra]


def start_queue_worker(url: str, log_dir: Path, name: str, *extra: str, **env: str) -> subprocess.Popen:
    """A queue worker process writing its output to `log_dir/name.out`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.out", "wb") as out:
        return subprocess.Popen(worker_command(*extra), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=service_env(DATABASE_URL=url, **env))


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
    """SIGTERM a process we started, wait (bounded), SIGKILL if needed; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
            return None
    return proc.returncode


# ------------------------------------------------------------------ load


@dataclass
class Result:
    """One request of the load generator."""

    kind: str  # create | batch | process | health | read
    status: int | None  # None: no HTTP answer (connection reset, timeout)
    started: float  # time.monotonic()
    latency: float
    tokens: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    code: str | None = None  # error.code of an error envelope, or health's status
    error: str | None = None  # exception text when status is None

    @property
    def ended(self) -> float:
        return self.started + self.latency


class LoadGenerator:
    """Bounded client threads against one server.

    `mix` maps kinds to weights: create (POST /records), batch (POST /records/batch
    with `batch_size` records), process (POST /records/{id}/process on an id
    created earlier), health (GET /health), read (GET /records/{id}).
    Runs until `stop()`, the deadline, or `max_requests` requests in total.
    """

    def __init__(self, base_url: str, *, threads: int = 4, mix: dict[str, int] | None = None,
                 duration: float = 30.0, max_requests: int = 20000, batch_size: int = 20,
                 category: str = "load", timeout: float = 15.0, payload_bytes: int = 0):
        self.base_url, self.threads, self.duration = base_url, threads, duration
        self.mix = mix or {"create": 1}
        self.max_requests, self.batch_size, self.category = max_requests, batch_size, category
        self.timeout, self.filler = timeout, "x" * payload_bytes
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._issued = 0
        self._created: list[str] = []
        self._workers: list[threading.Thread] = []
        self.deadline = 0.0

    # --- control
    def start(self) -> LoadGenerator:
        self.deadline = time.monotonic() + self.duration
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(random.Random(i),), name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self, timeout: float = 30.0) -> list[Result]:
        self._stop.set()
        end = time.monotonic() + timeout
        for t in self._workers:
            t.join(timeout=max(0.1, end - time.monotonic()))
        assert not any(t.is_alive() for t in self._workers), "load threads did not stop in time"
        return self.snapshot()

    def join(self, timeout: float) -> list[Result]:
        """Wait (bounded) for the threads to end by themselves (deadline or request count)."""
        end = time.monotonic() + timeout
        for t in self._workers:
            t.join(timeout=max(0.1, end - time.monotonic()))
        return self.stop()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def count_since(self, since: float, kind: str | None = None, statuses: tuple = (200, 201)) -> int:
        return sum(1 for r in self.snapshot() if r.started >= since and (kind is None or r.kind == kind)
                   and r.status in statuses)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Poll `predicate()` until true; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
            time.sleep(0.02)

    # --- the client loop
    def _claim(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._issued >= self.max_requests or time.monotonic() >= self.deadline:
                return False
            self._issued += 1
            return True

    def _run(self, rng: random.Random) -> None:
        kinds = [k for k, w in self.mix.items() for _ in range(w)]
        while self._claim():
            kind = rng.choice(kinds)
            if kind in ("process", "read"):
                with self._lock:
                    rid = rng.choice(self._created) if self._created else None
                if rid is None:
                    kind = "create"
            result = getattr(self, f"_do_{kind}")(rid) if kind in ("process", "read") else getattr(
                self, f"_do_{kind}")()
            with self._lock:
                self.results.append(result)
                if result.status == 201:
                    self._created.extend(result.ids)

    def _token(self) -> str:
        return uuid.uuid4().hex

    def _call(self, kind: str, method: str, path: str, body=None, tokens=()) -> tuple[Result, dict | None]:
        started = time.monotonic()
        try:
            status, _, raw = request(method, self.base_url + path, body, timeout=self.timeout)
        except Exception as exc:  # no HTTP answer at all
            return Result(kind, None, started, time.monotonic() - started, list(tokens),
                          error=f"{type(exc).__name__}: {exc}"), None
        latency = time.monotonic() - started
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        code = None
        if isinstance(doc, dict):
            code = doc.get("error", {}).get("code") if isinstance(doc.get("error"), dict) else doc.get("status")
        return Result(kind, status, started, latency, list(tokens), code=code), doc

    def _body(self, token: str) -> dict:
        payload = {"token": token, "priority": 5}
        if self.filler:
            payload["filler"] = self.filler
        return {"source": "faults", "category": self.category, "payload": payload}

    def _do_create(self) -> Result:
        token = self._token()
        result, doc = self._call("create", "POST", "/records", self._body(token), [token])
        if result.status == 201 and doc:
            result.ids = [doc["id"]]
        return result

    def _do_batch(self) -> Result:
        tokens = [self._token() for _ in range(self.batch_size)]
        result, doc = self._call("batch", "POST", "/records/batch",
                                 {"records": [self._body(t) for t in tokens]}, tokens)
        if result.status == 201 and doc:
            result.ids = [item["id"] for item in doc["items"]]
        return result

    def _do_process(self, rid: str) -> Result:
        result, _ = self._call("process", "POST", f"/records/{rid}/process")
        result.ids = [rid]
        return result

    def _do_read(self, rid: str) -> Result:
        result, _ = self._call("read", "GET", f"/records/{rid}")
        result.ids = [rid]
        return result

    def _do_health(self) -> Result:
        return self._call("health", "GET", "/health")[0]


def summarize(results: list[Result]) -> dict:
    """Counts per kind and status, and latency figures, for assertion messages and the docs."""
    by = Counter(f"{r.kind}:{r.status}" for r in results)
    lat = sorted(r.latency for r in results) or [0.0]
    return {"requests": len(results), "by_kind_status": dict(sorted(by.items())),
            "latency_max_s": round(lat[-1], 3), "latency_p50_s": round(lat[len(lat) // 2], 3)}


def bad_answers(results: list[Result], allowed: set[int | None]) -> list[Result]:
    """Results whose status is not allowed, and 503s that are not the SPEC envelope."""
    bad = [r for r in results if r.status not in allowed]
    bad += [r for r in results if r.status == 503 and r.code not in ("SERVICE_UNAVAILABLE", "unhealthy")]
    return bad


# ------------------------------------------------------------------ checking the database


def stored(db) -> tuple[dict, dict, Counter, Counter]:
    """(token -> [(id, status)], id -> status, creation events per id, terminal events per id)."""
    token_sql = ("SELECT CAST(id AS TEXT) AS id, status, json_extract(payload, '$.token') AS token FROM records"
                 if db.dialect == "sqlite" else
                 "SELECT CAST(id AS TEXT) AS id, status, payload ->> 'token' AS token FROM records")
    with db.read(snapshot=True) as s:
        rows = s.all_sql(token_sql)
        events = s.all_sql("SELECT CAST(record_id AS TEXT) AS record_id, from_status, to_status FROM record_events")
    by_token: dict[str, list] = {}
    statuses = {}
    for row in rows:
        by_token.setdefault(row["token"], []).append((row["id"], row["status"]))
        statuses[row["id"]] = row["status"]
    creations = Counter(e["record_id"] for e in events if e["from_status"] is None)
    terminals = Counter(e["record_id"] for e in events if e["to_status"] in ("processed", "failed"))
    return by_token, statuses, creations, terminals


def check_writes(db, results: list[Result]) -> dict:
    """Every acknowledged write is present once; nothing is half-written or applied twice.

    - each 201 token is stored exactly once, under the id the response gave;
    - each token of an unacknowledged write (503, no answer) is absent, or stored
      once with its creation event (all records of a batch or none);
    - every record has exactly one creation event and at most one terminal event;
    - a 200 from /process left the record processed or failed.
    Returns figures for the docs; raises AssertionError listing what is wrong.
    """
    by_token, statuses, creations, terminals = stored(db)
    problems = []
    acked = unacked_present = unacked_absent = 0
    for r in results:
        if r.kind not in ("create", "batch"):
            continue
        if r.status == 201:
            for token, rid in zip(r.tokens, r.ids, strict=True):
                acked += 1
                found = by_token.get(token, [])
                if [i for i, _ in found] != [rid]:
                    problems.append(f"acknowledged {r.kind} token {token} id {rid}: stored as {found}")
        else:
            present = [t for t in r.tokens if t in by_token]
            unacked_present += len(present)
            unacked_absent += len(r.tokens) - len(present)
            if present and len(present) != len(r.tokens):
                problems.append(f"{r.kind} answered {r.status}: {len(present)} of {len(r.tokens)} records stored")
            for token in present:
                if len(by_token[token]) != 1:
                    problems.append(f"{r.kind} answered {r.status}: token {token} stored {by_token[token]}")
    for token, found in by_token.items():
        if len(found) > 1:
            problems.append(f"token {token} stored {len(found)} times")
    for rid in statuses:
        if creations[rid] != 1:
            problems.append(f"record {rid}: {creations[rid]} creation events")
        if terminals[rid] > 1:
            problems.append(f"record {rid}: {terminals[rid]} terminal events (processed twice)")
    for r in results:
        if r.kind == "process" and r.status == 200:
            if statuses.get(r.ids[0]) not in ("processed", "failed") or terminals[r.ids[0]] != 1:
                problems.append(f"process 200 for {r.ids[0]}: status {statuses.get(r.ids[0])}, "
                                f"{terminals[r.ids[0]]} terminal events")
    assert not problems, f"{len(problems)} problems, first: {problems[:10]}"
    return {"records": len(statuses), "acknowledged": acked, "unacknowledged_present": unacked_present,
            "unacknowledged_absent": unacked_absent, "processed_or_failed": sum(1 for v in terminals.values() if v)}


# ------------------------------------------------------------------ throw-away PostgreSQL


def pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<ver>/bin holding initdb and pg_ctl."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4])
                   if Path(p).parts[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PgCluster:
    """A PostgreSQL cluster of our own: initdb in a temp dir, pg_ctl start/stop on a free port.

    As root the binaries run as the `postgres` OS user (runuser). The data directory
    is removed by `destroy()`; the shared server on 5432 is never touched.
    """

    def __init__(self):
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="wf-faults-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8",
                  timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}\n{self.log_tail()}")
        return done

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "start", "-w", "-t", "30")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "stop", "-m", "fast", "-w", "-t", "30")

    def running(self) -> bool:
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL).returncode == 0

    def destroy(self) -> None:
        try:
            if self.data.exists() and self.running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ mounts


def run_mount(*args: str) -> subprocess.CompletedProcess:
    """`mount ARGS` (bounded); the caller checks returncode."""
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def unmount(path: Path) -> None:
    """Unmount `path`, lazily if it is still busy."""
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0 and os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, timeout=30)
