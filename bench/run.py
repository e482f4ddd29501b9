"""Load-test the workflow service with wrk, beside its ceiling and the FastAPI peer.

    .venv/bin/python bench/run.py [--quick] [--records N] [--duration S] [--repeat K]
        [--peer PATH] [--databases sqlite,postgresql] [--output docs/benchmarks.md]

Per database: a throw-away SQLite file or PostgreSQL database, the service under
gunicorn (2 workers), N records seeded through POST /records/batch and about half
of them processed by `workflow worker --once`; then the ceiling (bench/ceiling_app.py)
and, with --peer, the FastAPI peer on a copy of the same rows. All servers run at
once and are idle but for the one under load; each scenario is run --repeat times
per server, interleaved, and the median kept. Traffic goes to 127.0.0.1 only.
docs/benchmarks.md says how to read the results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CATEGORIES = [f"c{i}" for i in range(10)]
SOURCES = ["api", "import", "webhook", "batch", "partner"]
FILTERED = "/records?status=processed&category=c3&sort_by=created_at&sort_order=asc&limit=50"
# The same filters newest first, the default order: the category's newer pending records come first
# (docs/benchmarks.md, "A slow shape").
FILTERED_NEWEST = "/records?status=processed&category=c3&limit=50"

PATTERNS = {"get": "/records/[0-9a-f-]+", "create": "/records", "batch": "/records/batch",
            "batch1000": "/records/batch", "process": "/records/[0-9a-f-]+/process"}
# key, label, which runners run it (RUNNERS); the reads' paths: read_scripts().
SCENARIOS = [
    ("health", "health", {"svc", "peer"}),
    ("get", "get by id", {"svc", "ceil", "ceil_sync", "peer"}),
    ("first_page", "first page", {"svc", "peer"}),
    ("filtered", "filtered + sorted", {"svc", "peer"}),
    ("filtered_newest", "filtered, newest first", {"svc", "peer"}),
    ("offset", "offset 90 %", {"svc", "peer"}),
    ("cursor", "cursor page (deep)", {"svc", "first"}),
    ("summary", "summary report", {"svc", "peer"}),
    ("timeseries", "time series (day)", {"svc"}),
    ("create", "create (single)", {"svc", "peer"}),
    ("batch", "batch create (100)", {"svc"}),
    ("batch1000", "batch create (1000)", {"svc"}),
    ("process", "process", {"svc", "peer"}),
]
# Runner: (its server, the scenario whose path and script it runs instead of the one at hand), in the
# order they take turns within each repetition. "ceil" is the ceiling under the service's own gunicorn
# settings (the target's), "ceil_sync" the same app under gunicorn's sync workers (one request per
# connection, no threads), for comparison. "first" is the service's first page again, run in turn with
# the deep cursor page: their ratio is a target, and a machine that slows down between two scenarios
# would move it (docs/benchmarks.md).
RUNNERS = {"svc": ("svc", None), "first": ("svc", "first_page"), "ceil": ("ceil", None),
           "ceil_sync": ("ceil_sync", None), "peer": ("peer", None)}
# Run after the wrk scenarios, on the service only: a CSV export of every record (its time and the
# worker's peak RSS) and the worker drain (records per second with 1 and 2 worker processes).
EXTRA_SCENARIOS = {"csv": "CSV export of every record", "drain": "worker drain"}

DONE_LUA = """
function done(s, latency, requests)
  io.write(string.format('BENCHJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,'
    .. '"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n', s.requests, s.duration, s.errors.status,
    s.errors.connect, s.errors.read, s.errors.write, s.errors.timeout, latency:percentile(50),
    latency:percentile(99)))
end
"""
IDS_LUA = """
local ids = {}
for line in io.lines("%(file)s") do ids[#ids + 1] = line end
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
"""
GET_LUA = IDS_LUA + """
function init(args) math.randomseed(os.time() + tid * 7919) end
function request() return wrk.format("GET", "/records/" .. ids[math.random(#ids)]) end
"""
# Each thread walks its own slice of fresh pending ids; past the end it starts over (409s).
PROCESS_LUA = IDS_LUA + """
function init(args) i = tid + 1 end
function request()
  local id = ids[((i - 1) %% #ids) + 1]
  i = i + %(threads)d
  return wrk.format("POST", "/records/" .. id .. "/process")
end
"""
POST_LUA = """
local bodies = %(bodies)s
local n = 0
function request()
  n = n + 1
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, bodies[(n %% #bodies) + 1])
end
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body=None, timeout: float = 120.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


class Server:
    """One server process (gunicorn or uvicorn master) in its own session; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict, cwd: Path, logdir: Path, port: int, ready: str):
        self.name, self.port, self.log = name, port, logdir / f"{name}.log"
        self.base = f"http://{HOST}:{port}"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(300):  # 30 s at most
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{self.log.read_text(errors='replace')[-2000:]}")
            try:
                if http("GET", self.base + ready, timeout=5)[0] < 500:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not answer {ready} within 30 s")

    def _workers(self):
        """The /proc directories of the master's children (its workers)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                if parent == self.proc.pid and b"resource_tracker" not in (stat.parent / "cmdline").read_bytes():
                    yield stat.parent
            except (OSError, IndexError, ValueError):
                continue

    def worker_pids(self) -> set[int]:
        return {int(proc.name) for proc in self._workers()}

    def worker_peaks_mib(self) -> list[float]:
        """VmHWM of each worker, in MiB."""
        peaks = []
        for proc in self._workers():
            try:
                match = re.search(r"^VmHWM:\s+(\d+) kB", (proc / "status").read_text(), re.M)
            except OSError:
                continue
            if match:
                peaks.append(round(int(match.group(1)) / 1024, 1))
        return sorted(peaks)

    def reset_worker_peaks(self) -> None:
        """Start each worker's peak again from its current RSS (Linux: "5" to clear_refs), so that
        the next figure is the next scenario's own and not a peak carried over from an earlier one."""
        for proc in self._workers():
            try:
                (proc / "clear_refs").write_text("5")
            except OSError:
                pass

    def log_size(self) -> int:
        return self.log.stat().st_size

    def status_counts(self, start: int, path: str, answered: int) -> dict[str, int]:
        """Status codes of the service's `request.end` log lines since offset `start` whose path matches.

        wrk counted `answered` responses; the workers write their lines a few at a time, so the file is
        read again until it holds that many (5 s at most: a response wrk cut off may never be logged).
        """
        pattern = re.compile(rb'"event": "request.end".*"path": "' + path.encode() + rb'".*"status_code": (\d+)')
        deadline = time.monotonic() + 5.0
        counts: dict[str, int] = {}
        with open(self.log, "rb") as fh:
            fh.seek(start)
            while True:
                for line in iter(fh.readline, b""):
                    if not line.endswith(b"\n"):  # a line still being written: read it whole next time
                        fh.seek(-len(line), os.SEEK_CUR)
                        break
                    match = pattern.search(line)
                    if match:
                        counts[match.group(1).decode()] = counts.get(match.group(1).decode(), 0) + 1
                if sum(counts.values()) >= answered or time.monotonic() > deadline:
                    return counts
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: its workers only
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


# ----------------------------------------------------------------- databases


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


def pg_url(dbname: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname


def query(url: str, sql: str) -> list[tuple]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///"):], timeout=30) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute(sql).fetchall()


def fresh_pending_ids(url: str, limit: int) -> list[str]:
    return [str(r[0]) for r in query(url, f"SELECT id FROM records WHERE status = 'pending' "
                                          f"ORDER BY random() LIMIT {int(limit)}")]


def make_record(rng: random.Random) -> dict:
    roll = rng.random()
    priority = (rng.randint(0, 10) if roll < 0.8 else str(rng.randint(0, 10)) if roll < 0.93
                else "urgent" if roll < 0.98 else None)  # ~5 % invalid -> failed
    payload = {"ref": f"INV-{rng.randint(1, 10**6)}", "amount": round(rng.uniform(1, 5000), 2)}
    if priority is not None:
        payload["priority"] = priority
    return {"source": rng.choice(SOURCES), "category": rng.choice(CATEGORIES), "payload": payload}


def seed(base: str, count: int, rng: random.Random) -> None:
    for start in range(0, count, 1000):
        batch = [make_record(rng) for _ in range(min(1000, count - start))]
        status, body = http("POST", base + "/records/batch", {"records": batch})
        if status != 201:
            raise RuntimeError(f"seeding: POST /records/batch -> {status}: {body[:300]!r}")


PEER_COLUMNS = "id, source, category, payload, status, result, classification, score, error, " \
               "created_at, updated_at, processed_at"


def seed_and_process(base: str, env: dict, url: str, n: int, rng: random.Random,
                     cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The benchmark's data: n // 2 records through the batch endpoint, processed by `worker --once`
    (about 5 % fail: see make_record), then the rest, left pending; the counts folded and the
    planner's statistics gathered. Returns the worker's run. `cwd` holds the service's code."""
    seed(base, n // 2, rng)
    worker = subprocess.run([sys.executable, "-m", "workflow", "worker", "--once", "--batch-size", "500",
                             "--concurrency", "2"], env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    seed(base, n - n // 2, rng)
    # As a running worker does every 5 minutes: fold the counts' shards (docs/reports.md).
    subprocess.run([sys.executable, "-m", "workflow", "cleanup"], env=env, cwd=cwd, check=True,
                   capture_output=True, timeout=300)
    analyze(url)
    return worker


def service_env(url: str) -> dict:
    """This process's environment for a server on `url`: open (no API key), logging each request."""
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "APP_ENV", "WEB_CONCURRENCY")}
    env.update(DATABASE_URL=url, API_KEY="", APP_ENV="", LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    return env


def start_service(env: dict, logs: Path, cwd: Path = ROOT, name: str = "service") -> Server:
    """The service as `workflow serve` runs it, with 2 workers; `cwd` holds its code."""
    port = free_port()
    return Server(name, [sys.executable, "-m", "workflow", "serve", "--host", HOST, "--port", str(port),
                         "--workers", "2"], env, cwd, logs, port, "/health")


def start_ceiling(name: str, env: dict, url: str, logs: Path, record_id: str, serve_options: bool = True) -> Server:
    """bench/ceiling_app.py under gunicorn with 2 workers: with `serve`'s worker options (the target's
    ceiling), or gunicorn's sync workers."""
    argv = [sys.executable, "-m", "gunicorn", "ceiling_app:app", "--chdir", str(ROOT / "bench"), "--workers", "2",
            "--log-level", "warning"]
    if serve_options:
        sys.path.insert(0, str(ROOT))
        import workflow  # the service's own module: the ceiling runs with serve's worker options

        argv += workflow.worker_options(workflow.build_parser().parse_args(["serve"]))  # serve's defaults
    port = free_port()
    return Server(name, [*argv, "--bind", f"{HOST}:{port}"], dict(env, CEILING_DATABASE_URL=url), ROOT, logs, port,
                  "/records/" + record_id)


def start_peer(peer: Path, env: dict, svc_url: str, peer_url: str, tmp: Path, logs: Path) -> Server:
    """The FastAPI peer under uvicorn (2 workers) on a copy of the service's rows in its own schema."""
    venv = ensure_peer_venv(peer)
    penv = dict(env, DATABASE_URL=peer_url)
    subprocess.run([str(venv / "bin/python"), str(peer / "app.py"), "initdb"], env=penv, cwd=tmp,
                   check=True, capture_output=True, timeout=120)
    copy_to_peer(svc_url, peer_url)
    analyze(peer_url)
    port = free_port()
    return Server("peer", [str(venv / "bin/uvicorn"), "--app-dir", str(peer), "app:app", "--host", HOST,
                           "--port", str(port), "--workers", "2"], penv, tmp, logs, port, "/health")


def copy_to_peer(src: str, dst: str) -> None:
    """Copy the service's seeded rows into the peer's `records` table (its own schema)."""
    if src.startswith("sqlite:///"):
        conv = {c: f"replace(replace({c}, 'T', ' '), 'Z', '')" for c in ("created_at", "updated_at", "processed_at")}
        cols = ", ".join(conv.get(c.strip(), c.strip()) for c in PEER_COLUMNS.split(","))
        with sqlite3.connect(dst[len("sqlite:///"):]) as conn:
            conn.execute("ATTACH DATABASE ? AS svc", (src[len("sqlite:///"):],))
            conn.execute(f"INSERT INTO records ({PEER_COLUMNS}) SELECT {cols} FROM svc.records")
        return
    import psycopg

    select = PEER_COLUMNS.replace("id,", "id::text,", 1).replace("payload", "payload::text") \
        .replace("result,", "result::text,")
    with psycopg.connect(src) as s, psycopg.connect(dst) as d:
        with s.cursor(name="copy") as cur, d.cursor().copy(f"COPY records ({PEER_COLUMNS}) FROM STDIN") as cp:
            cur.execute(f"SELECT {select} FROM records")
            for row in cur:
                cp.write_row(row)


def analyze(url: str) -> None:
    """Gather planner statistics and clear dead rows after seeding, as autovacuum would.

    Autovacuum is off on some servers (this machine's among them): without this, PostgreSQL plans
    the listings from an empty table's statistics and scans thousands of dead `record_counts` rows.
    """
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            conn.execute("ANALYZE")
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


# ----------------------------------------------------------------------- wrk


def run_wrk(url: str, script: Path, args) -> dict:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "30s",
            "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 90).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out[-1500:]}")
    res = json.loads(line[len("BENCHJSON "):])
    secs = res["duration_us"] / 1e6
    res["rps"] = round(res["requests"] / secs, 1)
    res["ok_rps"] = round((res["requests"] - res["non2xx"]) / secs, 1)
    return res


def lua(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.lua"
    path.write_text(body + DONE_LUA)
    return path


def post_script(tmp: Path, name: str, path: str, bodies: list) -> Path:
    items = ", ".join("[==[" + json.dumps(b) + "]==]" for b in bodies)
    return lua(tmp, name, POST_LUA % {"bodies": "{" + items + "}", "path": path})


def read_scripts(tmp: Path, tag: str, base: str, ids_file: Path, n: int) -> tuple[dict, dict, dict]:
    """The read scenarios on the service at `base`, seeded with n records whose ids `ids_file` lists:
    their paths, their wrk scripts, and whether the service answers each with 200 (the deep cursor's
    path is found by walking the pages: deep_cursor; without one it is not available)."""
    paths = {"health": "/health", "first_page": "/records", "filtered": FILTERED,
             "filtered_newest": FILTERED_NEWEST, "offset": f"/records?offset={int(n * 0.9)}",
             "summary": "/reports/summary", "timeseries": "/reports/timeseries?bucket=day"}
    scripts = {key: lua(tmp, f"{tag}-{key}", "") for key in paths}
    scripts["get"] = lua(tmp, f"{tag}-get", GET_LUA % {"file": ids_file})
    available = {key: probe(base, path) for key, path in paths.items()}
    cursor = deep_cursor(base, int(n * 0.9)) if probe(base, "/records?limit=1") else None
    available["cursor"] = bool(cursor)
    if cursor:
        paths["cursor"] = "/records?cursor=" + urllib.request.quote(cursor)
        scripts["cursor"] = lua(tmp, f"{tag}-cursor", "")
    return paths, scripts, available


def write_scripts(tmp: Path, tag: str, rng: random.Random) -> dict[str, Path]:
    """wrk scripts of the create and batch scenarios: 20 single bodies, 5 of 100 records, 3 of 1,000."""
    return {"create": post_script(tmp, f"{tag}-create", "/records", [make_record(rng) for _ in range(20)]),
            "batch": post_script(tmp, f"{tag}-batch", "/records/batch",
                                 [{"records": [make_record(rng) for _ in range(100)]} for _ in range(5)]),
            "batch1000": post_script(tmp, f"{tag}-batch1000", "/records/batch",
                                     [{"records": [make_record(rng) for _ in range(1000)]} for _ in range(3)])}


def process_script(tmp: Path, name: str, url: str, args) -> Path:
    """A process scenario's script over pending ids read from the database now (each once, then 409s)."""
    ids = tmp / f"{name}.txt"
    ids.write_text("\n".join(fresh_pending_ids(url, 2000 * args.duration)) + "\n")
    return lua(tmp, name, PROCESS_LUA % {"file": ids, "threads": args.threads})


def probe(base: str, path: str) -> bool:
    try:
        return http("GET", base + path, timeout=60)[0] == 200
    except OSError:
        return False


def deep_cursor(base: str, depth: int, budget_s: float = 60.0) -> str | None:
    """Walk the keyset pages (200 a page) to about `depth` rows; None if there is no cursor."""
    status, body = http("GET", base + "/records?limit=200")
    cursor = json.loads(body).get("next_cursor") if status == 200 else None
    deadline, seen = time.monotonic() + budget_s, 200
    for _ in range(depth // 200):
        if not cursor or seen >= depth or time.monotonic() > deadline:
            break
        status, body = http("GET", base + "/records?limit=200&cursor=" + urllib.request.quote(cursor))
        nxt = json.loads(body).get("next_cursor") if status == 200 else None
        if not nxt:
            break
        cursor, seen = nxt, seen + 200
    return cursor


# ---------------------------------------------------------------------- peer


def ensure_peer_venv(peer: Path) -> Path:
    venv = ROOT / ".venv-peer"
    if not (venv / "bin" / "uvicorn").exists():
        log(f"creating {venv} for the peer (pip install -r {peer / 'requirements.txt'})")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "-r", str(peer / "requirements.txt")],
                       check=True, timeout=900)
    return venv


# ---------------------------------------------------------------------- main


def bench_database(kind: str, args, tmp: Path, peer: Path | None) -> dict:
    n = args.records
    rng = random.Random(42)
    pg_names = []
    if kind == "sqlite":
        svc_url, peer_url = f"sqlite:///{tmp}/service.db", f"sqlite:///{tmp}/peer.db"
    else:
        tag = f"wf_bench_{os.getpid()}"
        pg_names = [tag + "_svc", tag + "_peer"]
        for name in pg_names:
            pg_admin(f'CREATE DATABASE "{name}"')
        svc_url, peer_url = pg_url(pg_names[0]), pg_url(pg_names[1])
    env = service_env(svc_url)
    servers: dict[str, Server] = {}
    logs = tmp / kind
    logs.mkdir()
    results: dict = {"database": kind, "records": n, "scenarios": {}}
    try:
        servers["svc"] = start_service(env, logs)
        t0 = time.monotonic()
        worker = seed_and_process(servers["svc"].base, env, svc_url, n, rng)
        results["seed_seconds"] = round(time.monotonic() - t0, 1)
        results["seed_peak_mib"] = servers["svc"].worker_peaks_mib()  # 1,000-record batches
        servers["svc"].reset_worker_peaks()
        results["worker"] = worker.stdout.strip().splitlines()[-1:] or [worker.stderr[-300:]]
        results["statuses"] = dict(query(svc_url, "SELECT status, count(*) FROM records GROUP BY status"))
        log(f"{kind}: seeded {n} records in {results['seed_seconds']} s, statuses {results['statuses']}")
        ids = [str(r[0]) for r in query(svc_url, "SELECT id FROM records")]
        ids_file = tmp / f"ids-{kind}.txt"
        ids_file.write_text("\n".join(ids) + "\n")

        servers["ceil"] = start_ceiling("ceiling", env, svc_url, logs, ids[0])
        servers["ceil_sync"] = start_ceiling("ceil-sync", env, svc_url, logs, ids[0], serve_options=False)
        if peer:
            servers["peer"] = start_peer(peer, env, svc_url, peer_url, tmp, logs)

        paths, scripts, available = read_scripts(tmp, kind, servers["svc"].base, ids_file, n)
        scripts.update(write_scripts(tmp, kind, rng))
        missing = [k for k, ok in available.items() if not ok]
        if missing:
            log(f"{kind}: not served, marked n/a: {', '.join(missing)}")

        for key, label, where in SCENARIOS:
            row = results["scenarios"].setdefault(key, {"label": label})
            if not available.get(key, True) or key not in args.scenarios:
                row["svc"] = None
                continue
            for rep in range(args.repeat):
                for who, (server, instead) in RUNNERS.items():
                    if who not in where or server not in servers:
                        continue
                    srv = servers[server]
                    path_key = instead or key
                    script = scripts.get(path_key)
                    if key == "process":
                        script = process_script(tmp, f"{kind}-{who}-process-{rep}",
                                                svc_url if who == "svc" else peer_url, args)
                    start = srv.log_size()
                    srv.reset_worker_peaks()
                    res = run_wrk(srv.base + paths.get(path_key, ""), script, args)
                    if server == "svc":
                        res["statuses"] = srv.status_counts(
                            start, PATTERNS.get(path_key) or re.escape(paths[path_key].split("?")[0]),
                            res["requests"])
                    res["worker_peak_mib"] = srv.worker_peaks_mib()
                    row.setdefault(who + "_runs", []).append(res)
                    runner = instead or srv.name  # "first_page" for the cursor's first page
                    log(f"{kind} {label:<20} {runner:<8} run {rep + 1}: {res['rps']:>8} req/s "
                        f"p50 {res['p50_us'] / 1000:.1f} ms p99 {res['p99_us'] / 1000:.1f} ms "
                        f"non-2xx {res['non2xx']}")
            for who in RUNNERS:
                runs = row.get(who + "_runs")
                if runs:
                    row[who] = {"rps": statistics.median(r["rps"] for r in runs),
                                "ok_rps": statistics.median(r["ok_rps"] for r in runs),
                                "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                                "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                                "non2xx": sum(r["non2xx"] for r in runs),
                                "peak_mib": max(max(r["worker_peak_mib"] or [0]) for r in runs)}
        if "csv" in args.scenarios:
            results["csv"] = export_csv(servers["svc"])
            log(f"{kind}: CSV export {results['csv']}")
        if "drain" in args.scenarios:
            results["drain"] = drain(env, svc_url, servers["svc"].base, rng, args)
        svc_statuses: dict[str, int] = {}
        for row in results["scenarios"].values():
            for r in row.get("svc_runs", []) + row.get("first_runs", []):
                for code, cnt in r.get("statuses", {}).items():
                    if code.startswith("5"):
                        svc_statuses[code] = svc_statuses.get(code, 0) + cnt
        results["service_5xx"] = svc_statuses
        tail = [ln for ln in servers["svc"].log.read_text(errors="replace").splitlines()
                if '"level": "error"' in ln or "Traceback" in ln or "[CRITICAL]" in ln or "WORKER TIMEOUT" in ln]
        results["service_errors"] = tail[:20]
    finally:
        for srv in servers.values():
            srv.stop()
        for name in pg_names:
            try:
                pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001 - report and go on
                log(f"could not drop {name}: {exc}")
    return results


def export_csv(srv: Server) -> dict:
    """Download every record as CSV; the worker's peak RSS before and after shows whether it streams."""
    srv.reset_worker_peaks()
    before = srv.worker_peaks_mib()  # the workers' RSS now
    started, size, rows = time.monotonic(), 0, 0
    with urllib.request.urlopen(srv.base + "/records?format=csv", timeout=1800) as resp:
        while chunk := resp.read(1 << 20):
            size += len(chunk)
            rows += chunk.count(b"\n")
    return {"seconds": round(time.monotonic() - started, 1), "mib": round(size / 2**20, 1),
            "lines": rows, "peak_rss_before_mib": before, "peak_rss_after_mib": srv.worker_peaks_mib()}


def count_pending(url: str) -> int:
    return query(url, "SELECT count(*) FROM records WHERE status = 'pending'")[0][0]


def run_drain(env: dict, url: str, processes: int) -> dict:
    """Start `processes` × `python -m workflow worker --once` (its defaults) and time them to the end."""
    pending = count_pending(url)
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "workflow", "worker", "--once"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(processes)]
    codes = [p.wait(timeout=1800) for p in procs]
    seconds = time.monotonic() - started
    done = pending - count_pending(url)
    if any(codes):
        raise RuntimeError(f"worker --once exited {codes}: {procs[0].stderr.read()[-300:]!r}")
    return {"records": done, "seconds": round(seconds, 2), "per_second": round(done / seconds)}


def drain(env: dict, url: str, base: str, rng: random.Random, args) -> dict:
    """Records processed per second by 1 and by 2 worker processes, each run on freshly seeded pending records.

    What the read and write scenarios left pending is drained first, unmeasured, and the dead
    rows it leaves cleared, as autovacuum would (`analyze`): otherwise every claim steps over
    their entries in the queue's index (docs/engine.md). Times include each worker's start-up
    (~0.3 s), as an operator's `--once` run would.
    """
    size = min(20_000, max(2_000, args.records // 5))
    run_drain(env, url, 2)
    analyze(url)
    runs: dict[str, list[dict]] = {"1": [], "2": []}
    for rep in range(args.repeat):
        for processes in (1, 2):
            seed(base, size, rng)
            res = run_drain(env, url, processes)
            runs[str(processes)].append(res)
            log(f"drain, {processes} worker(s), run {rep + 1}: {res['records']} records in {res['seconds']} s, "
                f"{res['per_second']} records/s")
    return {key: {"runs": r, "per_second": statistics.median(x["per_second"] for x in r)} for key, r in runs.items()}


def ratio(a, b) -> str:
    return f"{a / b:.2f}×" if a and b else "n/a"


def fmt(x, spec=".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def render(all_results: list[dict], args, peer) -> str:
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{' '.join(sys.argv[1:]) or '(defaults)'}`"
             f" — {args.records:,} records, {args.duration} s × {args.repeat} per scenario and server, "
             f"wrk -t{args.threads} -c{args.connections}, medians. Peer: {peer or 'not measured'}.", ""]
    for res in all_results:
        sc = res["scenarios"]
        get = sc["get"]
        lines += [f"### {res['database']}", "",
                  f"Seeded in {res['seed_seconds']} s with 1,000-record batches (workers' peak RSS then "
                  f"{res.get('seed_peak_mib')} MiB); statuses {res['statuses']}. Each scenario's peak below "
                  "is its own: the peaks are reset before every run.", "",
                  "| scenario | req/s | p50 ms | p99 ms | non-2xx | worker peak MiB | peer req/s | peer p99 ms "
                  "| peer non-2xx | peer MiB | vs peer |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, row in sc.items():
            s, p = row.get("svc"), row.get("peer")
            label = row["label"]
            if key == "process" and row.get("svc_runs"):
                codes: dict[str, int] = {}
                for r in row["svc_runs"]:
                    for c, k in r.get("statuses", {}).items():
                        codes[c] = codes.get(c, 0) + k
                label += " (" + ", ".join(f"{c}: {k}" for c, k in sorted(codes.items())) + ")"
            if s is None:
                lines.append(f"| {label} | n/a | | | | | | | | | |")
                continue
            lines.append(
                f"| {label} | {fmt(s['rps'])} | {fmt(s['p50_ms'], '.1f')} | {fmt(s['p99_ms'], '.1f')} | "
                f"{s['non2xx']} | {s['peak_mib']} | {fmt(p and p['rps'])} | {fmt(p and p['p99_ms'], '.1f')} | "
                f"{p['non2xx'] if p else 'n/a'} | {p['peak_mib'] if p else 'n/a'} | "
                f"{ratio(s['ok_rps'], p and p['ok_rps'])} |")
        ceil, ceil_sync, svc = get.get("ceil"), get.get("ceil_sync"), get.get("svc")
        single = sc["create"].get("svc")
        lines += ["", f"- get by id vs ceiling (bare Falcon + one point query under the service's gunicorn "
                      f"settings, {fmt(ceil and ceil['rps'])} req/s): "
                      f"**{ratio(svc and svc['rps'], ceil and ceil['rps'])}** (target ≥ 0.8×); vs the same app "
                      f"under sync workers ({fmt(ceil_sync and ceil_sync['rps'])} req/s): "
                      f"{ratio(svc and svc['rps'], ceil_sync and ceil_sync['rps'])}"]
        cursor, first = sc.get("cursor", {}).get("svc"), sc.get("cursor", {}).get("first")
        if cursor and first:
            lines.append(f"- cursor page (deep) vs the first page, run in turn with it ({fmt(first['rps'])} req/s): "
                         f"**{ratio(cursor['ok_rps'], first['ok_rps'])}** (target ≥ 0.8×)")
        for key, size in (("batch", 100), ("batch1000", 1000)):
            batch = sc.get(key, {}).get("svc")
            if batch and single:
                lines.append(f"- batch create ({size:,} records a request): {batch['ok_rps'] * size:,.0f} records/s "
                             f"vs single create {single['ok_rps']:,.0f} records/s: "
                             f"**{ratio(batch['ok_rps'] * size, single['ok_rps'])}** per record (target ≥ 20×)")
        if res.get("csv"):
            c = res["csv"]
            lines.append(f"- CSV export of every record: {c['lines'] - 1:,} rows, {c['mib']} MiB in {c['seconds']} s; "
                         f"worker peak RSS {c['peak_rss_before_mib']} MiB before, {c['peak_rss_after_mib']} after")
        if res.get("drain"):
            d = res["drain"]
            lines.append(f"- worker drain (`worker --once`, fresh pending records): 1 process "
                         f"{d['1']['per_second']:,.0f} records/s, 2 processes {d['2']['per_second']:,.0f} records/s "
                         f"({ratio(d['2']['per_second'], d['1']['per_second'])})")
        if res["service_5xx"] or res["service_errors"]:
            lines.append(f"- service 5xx: {res['service_5xx'] or 'none'}; error log lines: "
                         f"{len(res['service_errors'])} (first in the JSON below)")
        lines.append("")
    raw = [{k: v for k, v in r.items()} for r in all_results]
    lines += ["<details><summary>Raw results (JSON)</summary>", "", "```json", json.dumps(raw, indent=1), "```",
              "", "</details>"]
    return "\n".join(lines)


def write_section(path: Path, name: str, heading: str, text: str) -> None:
    """Put `text` between the `<!-- name:start -->` and `<!-- name:end -->` markers of the markdown file
    `path` (bench/run.py's results, scale.py's and writecost.py's tables); without the markers, append
    them under `heading`, creating the file if need be."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    if start not in doc:
        doc += f"\n{heading}\n\n{start}\n{end}\n"
    head, rest = doc.split(start, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 records, 3 s, 1 repeat")
    ap.add_argument("--records", type=int)
    ap.add_argument("--duration", type=int)
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    ap.add_argument("--peer", help="path of the FastAPI peer (relative to the repository or absolute)")
    ap.add_argument("--databases", default="sqlite")
    ap.add_argument("--output", default="docs/benchmarks.md")
    ap.add_argument("--scenarios", help="comma-separated keys to run (default: all): "
                    + ", ".join([key for key, _, _ in SCENARIOS] + list(EXTRA_SCENARIOS)))
    args = ap.parse_args()
    args.records = args.records or (10_000 if args.quick else 100_000)
    args.duration = args.duration or (3 if args.quick else 10)
    args.repeat = args.repeat or (1 if args.quick else 3)
    known = {key for key, _, _ in SCENARIOS} | set(EXTRA_SCENARIOS)
    args.scenarios = set(args.scenarios.split(",")) if args.scenarios else known
    if args.scenarios - known:
        sys.stderr.write(f"bench: unknown scenarios {sorted(args.scenarios - known)}\n")
        return 2
    if not shutil.which("wrk"):
        sys.stderr.write("bench: wrk is not installed; install it with `apt-get install -y wrk` (as root)\n")
        return 2
    peer = None
    if args.peer:
        peer = Path(args.peer) if Path(args.peer).is_absolute() else (ROOT / args.peer).resolve()
        if not (peer / "app.py").exists():
            sys.stderr.write(f"bench: no peer app at {peer}\n")
            return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="wf-bench-") as tmp:
        for kind in [d.strip() for d in args.databases.split(",") if d.strip()]:
            if kind not in ("sqlite", "postgresql"):
                sys.stderr.write(f"bench: unknown database {kind!r}\n")
                return 2
            results.append(bench_database(kind, args, Path(tmp), peer))
    md = render(results, args, peer and os.path.relpath(peer, ROOT))
    print(md.split("<details>")[0])
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / time.strftime("%Y%m%d-%H%M%S.json")).write_text(json.dumps(results, indent=1))
    write_section(ROOT / args.output, "results", "## Results", md)
    log(f"wrote {args.output} and bench/results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
