"""Compare two versions of the service on this machine: the same scenarios, in alternating rounds.

    .venv/bin/python bench/ab.py --a HEAD --b . [--a-env KEY=VALUE] [--b-env KEY=VALUE]
        [--database sqlite|postgresql] [--records N] [--rounds K] [--duration S] [--scenarios health,get,...]

A side is a git revision of this repository (exported with `git archive`) or a directory holding
the service (relative to the repository, so `.` is the working tree), with settings of its own
(`--a-env`, `--b-env`). Both run at once under `workflow serve --workers 2` with this repository's
venv, each on its own database seeded alike (bench/run.py's seeding). Every round runs each scenario
on one side and then on the other, A first in the first round, B in the second, and so on, so that
a machine slowing down weighs on both. Prints, per scenario, each side's median req/s, B/A as the
median of the rounds' own ratios, how many rounds B won, the non-2xx answers and the workers' peak
RSS; the runs go to bench/results/ab-*.json. Traffic goes to 127.0.0.1 only. docs/benchmarks.md,
"Comparing two versions", says how much of a difference is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: servers, seeding, wrk)

ROOT = run.ROOT
DEFAULT_SCENARIOS = "health,get,first_page,create,batch"


@dataclass
class Side:
    name: str  # "A" or "B"
    spec: str  # as given: a directory or a git revision
    env: dict[str, str]
    code: Path | None = None  # where its workflow.py is
    described: str = ""
    url: str = ""
    server: run.Server | None = None
    scripts: dict[str, Path] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    available: dict[str, bool] = field(default_factory=dict)  # read scenarios the side answers with 200
    runs: dict[str, list[dict]] = field(default_factory=dict)


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` settings; a pair without `=` or with an empty key is an error."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"not KEY=VALUE: {pair!r}")
        env[key] = value
    return env


def materialise(spec: str, dest: Path) -> tuple[Path, str]:
    """The directory holding a side's code, and how to name it: `spec` itself when it holds workflow.py,
    else the git revision it names, exported into `dest`."""
    directory = (ROOT / spec).resolve()  # an absolute spec stays as it is
    if (directory / "workflow.py").is_file():
        return directory, f"{spec} ({directory})"
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--short", f"{spec}^{{commit}}"],
                         capture_output=True, text=True)
    if rev.returncode:
        raise ValueError(f"{spec!r} is neither a directory holding workflow.py nor a git revision")
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", rev.stdout.strip()], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True, timeout=120)
    archive.stdout.close()
    if archive.wait(timeout=120):
        raise RuntimeError(f"git archive {spec} failed")
    return dest, f"{spec} ({rev.stdout.strip()})"


def round_order(sides: list[Side], index: int) -> list[Side]:
    """A then B in the first round (index 0), B then A in the second, and so on."""
    return sides if index % 2 == 0 else sides[::-1]


def compare(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """Medians of each side's 2xx req/s, B/A as the median of each round's own ratio, rounds B won;
    the non-2xx answers and the highest worker peak RSS of each side."""
    pairs = [(a["ok_rps"], b["ok_rps"]) for a, b in zip(a_runs, b_runs, strict=True)]
    ratios = [b / a for a, b in pairs if a]
    return {"a_rps": statistics.median(a for a, _ in pairs), "b_rps": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios) if ratios else None, "b_won": sum(b > a for a, b in pairs),
            "rounds": len(pairs), "a_non2xx": sum(r["non2xx"] for r in a_runs),
            "b_non2xx": sum(r["non2xx"] for r in b_runs),
            "a_peak_mib": max(max(r["worker_peak_mib"] or [0]) for r in a_runs),
            "b_peak_mib": max(max(r["worker_peak_mib"] or [0]) for r in b_runs)}


def render(sides: list[Side], rows: dict[str, dict | None], args) -> str:
    a, b = sides
    lines = [f"A/B run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{' '.join(sys.argv[1:])}` — "
             f"{args.database}, {args.records:,} records each, {args.rounds} rounds × {args.duration} s, "
             f"wrk -t{args.threads} -c{args.connections}.", ""]
    for side in sides:
        settings = ", ".join(f"{k}={v}" for k, v in side.env.items()) or "no settings of its own"
        lines.append(f"- {side.name}: {side.described}; {settings}")
    lines += ["", f"| scenario | {a.name} req/s | {b.name} req/s | {b.name}/{a.name} (median of rounds) "
                  f"| {b.name} won | {a.name} non-2xx | {b.name} non-2xx | {a.name} worker peak MiB "
                  f"| {b.name} worker peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {key: label for key, label, _ in run.SCENARIOS}
    for key, row in rows.items():
        if row is None:
            lines.append(f"| {labels[key]} | n/a | n/a | | | | | | |")
            continue
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}×"
        lines.append(f"| {labels[key]} | {row['a_rps']:,.0f} | {row['b_rps']:,.0f} | **{ratio}** | "
                     f"{row['b_won']} of {row['rounds']} | {row['a_non2xx']} | {row['b_non2xx']} | "
                     f"{row['a_peak_mib']} | {row['b_peak_mib']} |")
    return "\n".join(lines)


def prepare(side: Side, args, tmp: Path) -> None:
    """Start the side's service on its own database, seed it, and write its read scripts."""
    logs = tmp / f"logs-{side.name}"
    logs.mkdir()
    env = dict(run.service_env(side.url), **side.env)
    side.server = run.start_service(env, logs, cwd=side.code, name=f"service-{side.name}")
    run.seed_and_process(side.server.base, env, side.url, args.records, random.Random(42), cwd=side.code)
    ids = tmp / f"ids-{side.name}.txt"
    ids.write_text("\n".join(str(r[0]) for r in run.query(side.url, "SELECT id FROM records")) + "\n")
    side.paths, side.scripts, side.available = run.read_scripts(tmp, side.name, side.server.base, ids, args.records)


def measure(sides: list[Side], args, tmp: Path) -> dict[str, dict | None]:
    writes = run.write_scripts(tmp, "ab", random.Random(7))  # the same bodies for both sides
    keys = [key for key, _, _ in run.SCENARIOS if key in args.scenarios]
    keys = [key for key in keys if all(side.available.get(key, True) for side in sides)]  # writes: always
    for index in range(args.rounds):
        for key in keys:
            for side in round_order(sides, index):
                if key == "process":
                    script = run.process_script(tmp, f"{side.name}-process-{index}", side.url, args)
                else:
                    script = side.scripts.get(key) or writes[key]
                side.server.reset_worker_peaks()
                res = run.run_wrk(side.server.base + side.paths.get(key, ""), script, args)  # or the script's
                res["worker_peak_mib"] = side.server.worker_peaks_mib()
                side.runs.setdefault(key, []).append(res)
                run.log(f"round {index + 1} {key:<16} {side.name}: {res['ok_rps']:>8} req/s, non-2xx {res['non2xx']}")
    a, b = sides
    return {key: compare(a.runs[key], b.runs[key]) if key in keys else None
            for key, _, _ in run.SCENARIOS if key in args.scenarios}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="a directory holding the service (relative to the repository or "
                    "absolute), or a git revision")
    ap.add_argument("--b", required=True, help="the same for the other side")
    ap.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE", help="a setting of A's (repeat)")
    ap.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE", help="a setting of B's (repeat)")
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                    help=f"comma-separated keys (default {DEFAULT_SCENARIOS}): "
                    + ", ".join(key for key, _, _ in run.SCENARIOS))
    ap.add_argument("--json", help="where the runs go (default bench/results/ab-<time>.json)")
    args = ap.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    known = [key for key, _, _ in run.SCENARIOS]
    if set(args.scenarios) - set(known) or args.rounds < 1 or args.duration < 1 or args.records < 2:
        sys.stderr.write(f"ab: scenarios are among {known}; rounds, duration and records are positive\n")
        return 2
    if not shutil.which("wrk"):
        sys.stderr.write("ab: wrk is not installed; install it with `apt-get install -y wrk` (as root)\n")
        return 2
    try:
        sides = [Side("A", args.a, parse_env(args.a_env)), Side("B", args.b, parse_env(args.b_env))]
    except ValueError as exc:
        sys.stderr.write(f"ab: {exc}\n")
        return 2
    pg_names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="wf-ab-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            for side in sides:
                side.code, side.described = materialise(side.spec, tmp / f"code-{side.name}")
        except ValueError as exc:
            sys.stderr.write(f"ab: {exc}\n")
            return 2
        try:
            for side in sides:
                if (side.code / "requirements.txt").read_bytes() != (ROOT / "requirements.txt").read_bytes():
                    run.log(f"{side.name}'s requirements.txt differs from this checkout's; it runs on this venv")
                if args.database == "sqlite":
                    side.url = f"sqlite:///{tmp}/{side.name}.db"
                else:
                    name = f"wf_ab_{os.getpid()}_{side.name.lower()}"
                    run.pg_admin(f'CREATE DATABASE "{name}"')
                    pg_names.append(name)
                    side.url = run.pg_url(name)
                prepare(side, args, tmp)
                run.log(f"{side.name}: {side.described}, seeded {args.records} records")
            rows = measure(sides, args, tmp)
        finally:
            for side in sides:
                if side.server:
                    side.server.stop()
            for name in pg_names:
                try:
                    run.pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except Exception as exc:  # noqa: BLE001 - report and go on
                    run.log(f"could not drop {name}: {exc}")
    print(render(sides, rows, args))
    out = Path(args.json) if args.json else ROOT / "bench" / "results" / time.strftime("ab-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sides": [{"name": s.name, "spec": s.spec, "described": s.described, "env": s.env,
                                          "runs": s.runs} for s in sides], "rows": rows}, indent=1))
    run.log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
