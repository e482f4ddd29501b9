"""bench/ab.py compares two versions of the service in alternating rounds, on both databases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import PG_URL

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import ab  # noqa: E402  (bench/ab.py)


def test_settings_are_key_value_pairs():
    assert ab.parse_env(["LOG_LEVEL=WARNING", "X=a=b", "EMPTY="]) == {"LOG_LEVEL": "WARNING", "X": "a=b", "EMPTY": ""}
    for bad in ("LOG_LEVEL", "=1"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            ab.parse_env([bad])


def test_rounds_alternate_which_side_goes_first():
    a, b = ab.Side("A", ".", {}), ab.Side("B", ".", {})
    assert [[s.name for s in ab.round_order([a, b], i)] for i in range(4)] == [["A", "B"], ["B", "A"]] * 2


def _run(rps: float, non2xx: int = 0, peaks: tuple = (40.0, 41.0)) -> dict:
    return {"ok_rps": rps, "non2xx": non2xx, "worker_peak_mib": list(peaks)}


def test_the_ratio_is_the_median_of_each_rounds_own_ratio():
    # Round by round B is 1.1x, 0.5x and 1.2x A: the median pairs A and B of one round, so a round
    # where the machine was slow for both does not count as a loss for either.
    row = ab.compare([_run(100), _run(400), _run(1000)], [_run(110), _run(200, 3, (50.5,)), _run(1200)])
    assert row["ratio"] == pytest.approx(1.1)
    assert (row["a_rps"], row["b_rps"], row["b_won"], row["rounds"]) == (400, 200, 2, 3)
    assert (row["a_non2xx"], row["b_non2xx"]) == (0, 3)
    assert (row["a_peak_mib"], row["b_peak_mib"]) == (41.0, 50.5)


def test_a_side_is_a_directory_holding_the_service_or_a_git_revision(tmp_path):
    assert ab.materialise(".", tmp_path / "x")[0] == ROOT
    assert ab.materialise(str(ROOT), tmp_path / "y")[0] == ROOT
    with pytest.raises(ValueError, match="neither a directory"):
        ab.materialise("no-such-revision-or-directory", tmp_path / "z")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    code, described = ab.materialise("HEAD", tmp_path / "head")
    assert code == tmp_path / "head" and (code / "workflow.py").is_file() and (code / "sql").is_dir()
    assert described.startswith("HEAD (")


def test_two_sides_are_served_seeded_and_measured_in_turn(database_kind, tmp_path):
    if not shutil.which("wrk"):
        if os.environ.get("CI"):
            pytest.fail("wrk is missing in CI: .ci/run must install it")
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    out = tmp_path / "ab.json"
    env = dict(os.environ, BENCH_PG_URL=PG_URL)
    proc = subprocess.run([sys.executable, "bench/ab.py", "--a", ".", "--b", str(ROOT), "--b-env", "LOG_LEVEL=WARNING",
                           "--database", database_kind, "--records", "200", "--rounds", "2", "--duration", "1",
                           "--scenarios", "health,batch", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| health |" in proc.stdout and "| batch create (100) |" in proc.stdout
    assert "- B: " in proc.stdout and "LOG_LEVEL=WARNING" in proc.stdout
    raw = json.loads(out.read_text())
    assert [s["env"] for s in raw["sides"]] == [{}, {"LOG_LEVEL": "WARNING"}]
    for side in raw["sides"]:
        assert sorted(side["runs"]) == ["batch", "health"]
        assert all(len(runs) == 2 and all(r["requests"] > 0 and r["non2xx"] == 0 and len(r["worker_peak_mib"]) == 2
                                          for r in runs)
                   for runs in side["runs"].values())
    assert raw["rows"]["batch"]["rounds"] == 2
    # A went first in round 1 and B in round 2: the log says so, in that order.
    order = [line.split()[-5].rstrip(":") for line in proc.stdout.splitlines()
             if " round " in line and " health " in line]
    assert order == ["A", "B", "B", "A"]
    if database_kind == "postgresql":
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'wf_ab_%'").fetchall()
        assert left == []
