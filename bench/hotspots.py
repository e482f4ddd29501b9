"""Where a worker's CPU goes under load: py-spy samples the service while wrk drives a scenario.

    .venv/bin/python bench/hotspots.py [--databases sqlite,postgresql] [--records N] [--seconds S]
        [--rate HZ] [--scenarios health,get,ceiling_get,create,batch,filtered,peer_get,peer_create]
        [--peer ../shared/peers/fastapi_ref] [--output docs/benchmarks.md]

Per database: a throw-away SQLite file or PostgreSQL database seeded as bench/run.py seeds it
(run.seed_and_process: N records through POST /records/batch, half of them processed), the
service under gunicorn (2 workers, `workflow serve`'s settings) and, for `ceiling_get`, the
ceiling app (bench/ceiling_app.py) under the same settings, and with --peer the FastAPI peer
(uvicorn, 2 workers) on a copy of the rows, as bench/run.py runs them. For each scenario wrk runs 8
connections from 127.0.0.1, and after a second of warm-up py-spy (requirements-dev.txt; needs
ptrace, which root has) samples the workers for --seconds without pausing them
(`--nonblocking`), keeping only the thread that holds the interpreter lock (`--gil`): in a
worker, Python runs one thread at a time, so these samples are where its Python time goes.
The workers' CPU time in the same seconds comes from /proc; what the lock's samples do not
cover is work done with the lock released: SQLite's and libpq's C code, system calls, the
kernel's side of the sockets.

Each sample is put in the layer of its innermost frame that belongs to a layer: a module of
ours (`db`, `middleware`, `records`...; psycopg's Python code counts for `db`), Falcon,
gunicorn (HTTP parsing, socket I/O, the hand-offs between its threads). Time in the standard
library goes to the caller's layer: `json` called from `records` is `records`. Per request:
samples / rate / requests answered while sampling. Written to docs/benchmarks.md, section
"profiles"; the raw collapsed stacks go to bench/results/ (flamegraph.pl reads them).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: servers, seeding, wrk scripts)

ROOT = run.ROOT
SCENARIOS = {  # key: (label, server, wrk script key, path)
    "health": ("health", "svc", "plain", "/health"),
    "get": ("get by id", "svc", "get", ""),
    "ceiling_get": ("get by id, ceiling app", "ceil", "get", ""),
    "create": ("create (single)", "svc", "create", "/records"),
    "batch": ("batch create (100)", "svc", "batch", "/records/batch"),
    "filtered": ("filtered + sorted", "svc", "plain", run.FILTERED),
    # with --peer: the FastAPI peer (uvicorn, 2 workers) on a copy of the same rows
    "peer_get": ("get by id, peer", "peer", "get", ""),
    "peer_create": ("create (single), peer", "peer", "create", "/records"),
}
# (path fragment, layer): the first fragment found in a frame's file names its layer (in this order:
# "falcon/app.py" is Falcon's, "app.py" alone the peer's).
LAYERS = [
    ("workflow_service/", None),  # the module's own name: db, middleware, records...
    ("workflow.py", "workflow"),
    ("ceiling_app.py", "ceiling app"),
    ("psycopg", "db"),
    ("sqlite3/", "db"),
    ("falcon/", "falcon"),
    ("gunicorn/", "gunicorn"),
    # the peer's stack
    ("uvicorn/", "uvicorn"),
    ("starlette/", "starlette"),
    ("fastapi/", "fastapi"),
    ("pydantic", "pydantic"),
    ("sqlalchemy/", "sqlalchemy"),
    ("anyio/", "anyio"),
    ("asyncio/", "asyncio"),
    ("app.py", "peer app"),  # the peer's module, as py-spy names it (`--app-dir` puts it on the path)
]
LAYER_COLUMNS = ["gunicorn", "falcon", "middleware", "db"]  # the table's own columns; the rest are summed
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def layer_of(frame: str) -> str | None:
    match = FRAME.match(frame)
    if not match:
        return None
    path = match["file"]
    for fragment, layer in LAYERS:
        if fragment in path:
            return layer or Path(path.split(fragment, 1)[1]).stem
    return None


PROCESS = re.compile(r"^process (\d+):")


def summarise(raw_lines, rate: int, requests: int, pids: set[int]) -> dict:
    """Layers and hottest lines of py-spy's raw output (`frame;frame;... count` per line), counting
    only the samples of the processes `pids` (the workers, not gunicorn's master)."""
    layers: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    for line in raw_lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        owners = {int(m[1]) for m in map(PROCESS.match, frames) if m}
        # Without pausing the process py-spy may read a name while it changes: a frame of stray bytes,
        # newlines included, splits a stack over lines that do not parse; they are left out.
        if not owners & pids or not count.isdigit():
            continue
        frames = [f for f in frames if not PROCESS.match(f)]
        n = int(count)
        total += n
        layers[next((name for name in map(layer_of, reversed(frames)) if name), "other")] += n
        if frames:
            leaves[frames[-1]] += n
    per_request = (1e6 / rate / requests) if requests else 0.0
    return {"samples": total, "requests": requests,
            "gil_us": round(total * per_request, 1),
            "layers": [(name, n, round(n * per_request, 1)) for name, n in layers.most_common()],
            "lines": leaves.most_common(12)}


def cpu_seconds(pids) -> tuple[float, float]:
    """CPU time of the processes `pids`, from /proc: (all, of it in the kernel)."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + system) / tick, system / tick


def postgres_pids() -> set[int]:
    """The PostgreSQL server's processes on this machine (the benchmark's database is the busy one)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "postgres":
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def profile_scenario(srv: run.Server, kind: str, key: str, script: Path, path: str, args, raw_file: Path) -> dict:
    pids = srv.worker_pids()
    plain = run.run_wrk(srv.base + path, script, argparse.Namespace(threads=1, connections=8, duration=args.seconds))
    wrk = subprocess.Popen(["wrk", "-t1", "-c8", f"-d{args.seconds + 2}s", "--timeout", "30s", "--latency",
                            "-s", str(script), srv.base + path], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # warm-up: wrk's connections open and the workers' caches fill
        server_pids = postgres_pids() if kind == "postgresql" else set()  # the backends opened by now
        (cpu0, kernel0), (server0, _), t0 = cpu_seconds(pids), cpu_seconds(server_pids), time.monotonic()
        spy = subprocess.run([str(args.py_spy), "record", "--pid", str(srv.proc.pid), "--subprocesses",
                              "--nonblocking", "--gil", "--rate", str(args.rate), "--duration", str(args.seconds),
                              "--format", "raw", "--output", str(raw_file)],
                             capture_output=True, text=True, timeout=args.seconds + 60)
        (cpu, kernel), wall = cpu_seconds(pids), time.monotonic() - t0
        cpu, kernel, server_cpu = cpu - cpu0, kernel - kernel0, cpu_seconds(server_pids)[0] - server0
        out, _ = wrk.communicate(timeout=args.seconds + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    if spy.returncode != 0 or not raw_file.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr[-800:]}")
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out[-1500:]}")
    res = json.loads(line[len("BENCHJSON "):])
    rps = res["requests"] / (res["duration_us"] / 1e6)
    requests = round(rps * wall)
    with open(raw_file) as fh:
        summary = summarise(fh, args.rate, requests, pids)
    summary.update(rps=round(rps, 1), plain_rps=plain["rps"], non2xx=res["non2xx"] + plain["non2xx"], scenario=key,
                   cpu_us=round(cpu * 1e6 / requests, 1) if requests else 0.0,
                   kernel_us=round(kernel * 1e6 / requests, 1) if requests else 0.0,
                   server_cpu_us=round(server_cpu * 1e6 / requests, 1) if requests and server_pids else None,
                   gil_share=round(summary["samples"] / (args.rate * args.seconds * len(pids)), 3))
    return summary


def profile_database(kind: str, args, tmp: Path, raw_dir: Path) -> dict:
    rng = random.Random(42)
    pg_names = []
    if kind == "sqlite":
        url, peer_url = f"sqlite:///{tmp}/profile.db", f"sqlite:///{tmp}/peer.db"
    else:
        pg_names = [f"wf_hotspots_{os.getpid()}", f"wf_hotspots_{os.getpid()}_peer"]
        for name in pg_names:
            run.pg_admin(f'CREATE DATABASE "{name}"')
        url, peer_url = run.pg_url(pg_names[0]), run.pg_url(pg_names[1])
    env = run.service_env(url)
    logs = tmp / kind
    logs.mkdir()
    servers: dict[str, run.Server] = {}
    results = {"database": kind, "records": args.records, "scenarios": []}
    try:
        servers["svc"] = run.start_service(env, logs)
        run.seed_and_process(servers["svc"].base, env, url, args.records, rng).check_returncode()
        ids = [str(r[0]) for r in run.query(url, "SELECT id FROM records")]
        ids_file = tmp / f"ids-{kind}.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        run.log(f"{kind}: seeded {len(ids)} records")
        if "ceiling_get" in args.scenarios:
            servers["ceil"] = run.start_ceiling("ceiling", env, url, logs, ids[0])
        if args.peer and args.scenarios & {"peer_get", "peer_create"}:
            servers["peer"] = run.start_peer(args.peer, env, url, peer_url, tmp, logs)
        scripts = {"plain": run.lua(tmp, f"{kind}-plain", ""),
                   "get": run.lua(tmp, f"{kind}-get", run.GET_LUA % {"file": ids_file}),
                   "create": run.post_script(tmp, f"{kind}-create", "/records",
                                             [run.make_record(rng) for _ in range(20)]),
                   "batch": run.post_script(tmp, f"{kind}-batch", "/records/batch",
                                            [{"records": [run.make_record(rng) for _ in range(100)]}
                                             for _ in range(5)])}
        for key, (label, who, script, path) in SCENARIOS.items():
            if key not in args.scenarios or who not in servers:
                continue
            raw_file = raw_dir / f"{kind}-{key}.txt"
            summary = profile_scenario(servers[who], kind, key, scripts[script], path, args, raw_file)
            summary.update(label=label, server=who)
            results["scenarios"].append(summary)
            top = ", ".join(f"{name} {n * 100 / summary['samples']:.0f} %" for name, n, _ in summary["layers"][:4])
            run.log(f"{kind} {label:<24} {summary['rps']:>8} req/s, {summary['samples']} samples: {top}")
    finally:
        for srv in servers.values():
            srv.stop()
        for name in pg_names:
            run.pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def render(all_results: list[dict], args) -> str:
    parts = [f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: `bench/hotspots.py --records {args.records} "
             f"--seconds {args.seconds} --rate {args.rate}{' --peer ' + str(args.peer_label) if args.peer else ''}`: "
             f"wrk -t1 -c8 on a server's 2 workers, for "
             f"{args.seconds} s without the profiler (req/s), then as long again while py-spy samples the thread "
             f"of each worker that holds the interpreter lock {args.rate} times a second (profiled). Per request "
             "answered while sampling: the workers' CPU time (/proc); of it, the Python time under the lock by "
             "layer, and the rest, done with the lock released (SQLite's or libpq's C code, system calls); and, "
             "of all of it, the kernel's time (/proc: system calls, the sockets, page faults). \"lock held\" is "
             "the share of the time a worker's lock was held. On PostgreSQL, also the CPU time of the database "
             "server's processes per request. The peer's Python is all in \"other Python\", its layers below."]
    for res in all_results:
        parts.append(f"\n### {res['database']}\n")
        server = res["database"] == "postgresql"
        parts.append("| scenario | req/s | profiled | CPU µs a request | lock held | "
                     + " | ".join(LAYER_COLUMNS) + " | other Python | lock released | kernel |"
                     + (" PostgreSQL's CPU µs |" if server else ""))
        parts.append("|---|---:|---:|---:|---:|" + "---:|" * (len(LAYER_COLUMNS) + 3 + server))
        for sc in res["scenarios"]:
            by = {name: us for name, _, us in sc["layers"]}
            cells = ["–" if sc["server"] == "peer" else f"{by.pop(name, 0.0):,.0f}" for name in LAYER_COLUMNS]
            released = max(sc["cpu_us"] - sc["gil_us"], 0.0)
            parts.append(f"| {sc['label']} | {sc['plain_rps']:,.0f} | {sc['rps']:,.0f} | {sc['cpu_us']:,.0f} | "
                         f"{sc['gil_share'] * 100:.0f} % | " + " | ".join(cells)
                         + f" | {sum(by.values()):,.0f} | {released:,.0f} | {sc['kernel_us']:,.0f} |"
                         + (f" {sc['server_cpu_us']:,.0f} |" if server else ""))
        bad = [f"{sc['label']} {sc['non2xx']}" for sc in res["scenarios"] if sc["non2xx"]]
        parts.append("\nNon-2xx responses: " + (", ".join(bad) if bad else "none") + ".")
        for sc in res["scenarios"]:
            samples = sc["samples"] or 1
            parts.append(f"\n<details><summary>{res['database']}, {sc['label']}: every layer (µs a request), and "
                         "the hottest lines (innermost frame, share of the samples)</summary>\n")
            parts.append(", ".join(f"{name} {us:,.1f}" for name, _, us in sc["layers"]) + "\n")
            parts += [f"- {n * 100 / samples:.1f} % `{frame}`" for frame, n in sc["lines"]]
            parts.append("\n</details>")
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=10, help="sampling time per scenario (default 10)")
    ap.add_argument("--rate", type=int, default=100, help="samples a second per worker (default 100)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    ap.add_argument("--peer", help="path of the FastAPI peer, for the peer_* scenarios (relative to the repository "
                    "or absolute)")
    ap.add_argument("--output", default="docs/benchmarks.md")
    args = ap.parse_args()
    args.peer_label = args.peer
    if args.peer:
        args.peer = Path(args.peer) if Path(args.peer).is_absolute() else (ROOT / args.peer).resolve()
        if not (args.peer / "app.py").exists():
            sys.stderr.write(f"hotspots: no peer app at {args.peer}\n")
            return 2
    args.scenarios = set(args.scenarios.split(","))
    if args.scenarios - set(SCENARIOS):
        sys.stderr.write(f"hotspots: unknown scenarios {sorted(args.scenarios - set(SCENARIOS))}\n")
        return 2
    args.py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not args.py_spy:
        sys.stderr.write("hotspots: py-spy is not installed; `make .venv/.dev-installed` installs it\n")
        return 2
    if not shutil.which("wrk"):
        sys.stderr.write("hotspots: wrk is not installed; install it with `apt-get install -y wrk` (as root)\n")
        return 2
    kinds = [d.strip() for d in args.databases.split(",") if d.strip()]
    if set(kinds) - {"sqlite", "postgresql"}:
        sys.stderr.write(f"hotspots: unknown databases {sorted(set(kinds) - {'sqlite', 'postgresql'})}\n")
        return 2
    raw_dir = ROOT / "bench" / "results" / time.strftime("hotspots-%Y%m%d-%H%M%S")
    raw_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="wf-hotspots-") as tmp:
        results = [profile_database(kind, args, Path(tmp), raw_dir) for kind in kinds]
    md = render(results, args)
    print(md)
    (raw_dir / "summary.json").write_text(json.dumps(results, indent=1))
    run.write_section(ROOT / args.output, "profiles", "## Where the workers' time goes (`bench/hotspots.py`)", md)
    run.log(f"wrote {args.output} and {raw_dir.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
