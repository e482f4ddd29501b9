"""The scale benchmark: listings and reports at 1,000,000 records, and a CSV export's memory.

    .venv/bin/python bench/scale.py [--records 1000000] [--databases sqlite,postgresql] [--duration 5]

For each database: load N records with `python -m workflow import` (NDJSON,
batches of 5,000), analyse, start `serve --workers 2`, then measure with wrk the
first page of the unfiltered listing, a filtered and sorted listing, the
summary, and a cursor page 90 % deep (after a 2-second warm-up of each), each
as a ratio to the first page in the same run; finally stream `GET /records?format=csv` (every row) and report the
workers' peak RSS before and after it. Results go between the `scale` markers
of docs/benchmarks.md. Reuses bench/run.py's helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402  (bench/run.py)

SCENARIOS = [
    ("first", "first page", "/records"),
    ("filtered", "filtered + sorted", "/records?status=pending&category=c3&sort_by=created_at&sort_order=asc"),
    ("summary", "summary", "/reports/summary"),
    ("cursor", "cursor page 90 % deep", None),
]


def load(url: str, count: int, tmp: Path, env: dict) -> float:
    rng = random.Random(7)
    path = tmp / "records.ndjson"
    with open(path, "w") as out:
        for i in range(count):
            out.write(json.dumps({"source": base.SOURCES[i % 5], "category": base.CATEGORIES[rng.randrange(10)],
                                  "payload": {"priority": rng.randrange(10), "n": i}}) + "\n")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "workflow", "migrate", "up"], env=dict(env, DATABASE_URL=url),
                   cwd=base.ROOT, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "workflow", "import", str(path), "--batch-size", "5000"],
                   env=dict(env, DATABASE_URL=url), cwd=base.ROOT, check=True, capture_output=True, timeout=3600)
    seconds = time.monotonic() - started
    path.unlink()
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            conn.execute("ANALYZE")
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    return seconds


def clean_env() -> dict:
    """This process's environment without the service settings a load or a server gets from us."""
    return {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "API_KEY", "APP_ENV")}


def bench(kind: str, args, tmp: Path) -> dict:
    env = clean_env()
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'scale.db'}"
    else:
        name = f"wf_scale_{os.getpid()}"
        base.pg_admin(f'CREATE DATABASE "{name}"')
        url = base.pg_url(name)
    srv = None
    try:
        result = {"database": kind, "records": args.records, "load_seconds": round(load(url, args.records, tmp,
                                                                                         env), 1)}
        base.log(f"{kind}: loaded {args.records} records in {result['load_seconds']} s")
        port = base.free_port()
        srv = base.Server(f"scale-{kind}", [sys.executable, "-m", "workflow", "serve", "--no-migrate", "--host",
                                            base.HOST, "--port", str(port), "--workers", "2"],
                          dict(env, DATABASE_URL=url, LOG_LEVEL="WARNING"), base.ROOT, tmp, port, "/health")
        status, body = base.http("GET", f"{srv.base}/records?limit=50&offset={int(args.records * 0.9)}", timeout=600)
        cursor = json.loads(body)["next_cursor"] if status == 200 else None
        script = base.lua(tmp, "plain", "")
        paths = {key: path or "/records?cursor=" + urllib.request.quote(cursor or "") for key, _, path in SCENARIOS}
        # A freshly loaded file is still being written back and is cold in every cache:
        # the first seconds of each scenario measured that, not the service.
        os.sync()
        for path in paths.values():
            base.run_wrk(srv.base + path, script, argparse.Namespace(**dict(vars(args), duration=2)))
        # Repeats go round the scenarios, so that a slow spell of the machine, or of the
        # workers' share of wrk's keep-alive connections, does not fall on one scenario.
        runs: dict[str, list[dict]] = {key: [] for key in paths}
        for _ in range(args.repeat):
            for key, label, _ in SCENARIOS:
                runs[key].append(base.run_wrk(srv.base + paths[key], script, args))
                base.log(f"{kind} {label}: {runs[key][-1]['rps']} req/s p99 {runs[key][-1]['p99_us'] / 1000:.1f} ms")
        for key, label, _ in SCENARIOS:
            ordered = sorted(runs[key], key=lambda r: r["rps"])
            result[key] = dict(ordered[len(ordered) // 2], label=label, all_rps=[r["rps"] for r in runs[key]])
        result["csv"] = base.export_csv(srv)
        base.log(f"{kind} csv: {result['csv']}")
        return result
    finally:
        if srv:
            srv.stop()
        if kind != "sqlite":
            base.pg_admin(f'DROP DATABASE IF EXISTS "wf_scale_{os.getpid()}" WITH (FORCE)')


def render(results: list[dict], args) -> str:
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `bench/scale.py --records {args.records}"
             f" --duration {args.duration} --repeat {args.repeat}`, wrk -t{args.threads} -c{args.connections}."]
    for r in results:
        first = r["first"]["rps"]
        lines += ["", f"### {r['database']}: {r['records']:,} records (loaded in {r['load_seconds']} s)", "",
                  "| scenario | req/s | p50 ms | p99 ms | non-2xx | vs first page | each run, req/s |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for key, _, _ in SCENARIOS:
            s = r[key]
            lines.append(f"| {s['label']} | {s['rps']:.0f} | {s['p50_us'] / 1000:.1f} | {s['p99_us'] / 1000:.1f} "
                         f"| {s['non2xx']} | {s['rps'] / first:.2f}× | {' '.join(f'{x:.0f}' for x in s['all_rps'])} |")
        c = r["csv"]
        lines += ["", f"CSV export of every row: {c['lines'] - 1:,} rows, {c['mib']} MiB in {c['seconds']} s; "
                      f"worker peak RSS {c['peak_rss_before_mib']} MiB before, {c['peak_rss_after_mib']} MiB after."]
    lines += ["", "<details><summary>Raw results (JSON)</summary>", "", "```json", json.dumps(results, indent=1),
              "```", "</details>"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--output", default=str(base.ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wf-scale-") as tmp:
        results = [bench(kind, args, Path(tmp)) for kind in args.databases.split(",")]
    doc = Path(args.output)
    base.write_section(doc, "scale", "## At 1,000,000 records (`bench/scale.py`)", render(results, args))
    base.log(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
