"""bench/writecost.py, the reproducible proof of what a write costs, runs on both databases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import PG_URL

ROOT = Path(__file__).resolve().parent.parent
DOC = """# Benchmarks

before
<!-- writecost:start -->
old figures
<!-- writecost:end -->
after
"""


def test_writecost_times_every_case_and_rewrites_only_its_section(database_kind, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    env = dict(os.environ, BENCH_PG_URL=PG_URL)
    proc = subprocess.Popen([sys.executable, "bench/writecost.py", "--records", "1000", "--rounds", "3",
                             "--databases", database_kind, "--output", str(doc), "--json", str(tmp_path / "raw.json")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    text = doc.read_text()
    head, section = text.split("<!-- writecost:start -->\n")
    section, tail = section.split("<!-- writecost:end -->")
    assert head == "# Benchmarks\n\nbefore\n" and tail == "\nafter\n"
    assert "old figures" not in section
    assert f"### {database_kind}: 1,000 records" in section
    rows = [line for line in section.splitlines() if re.match(r"\| (1|100) records? \|", line)]
    totals = [int(m) for m in re.findall(r"\*\*(\d+)\*\*", section)]
    if database_kind == "sqlite":
        # alone and taking turns, for 100 records and for one; then the four groups left out
        assert len(rows) == 8 and len(totals) == 8
        assert sum("| 2 |" in row for row in rows) == 2
    else:
        assert len(rows) == 6 and len(totals) == 6
        assert re.search(r"autocommit.*: [\d,]+ µs for 100 records, [\d,]+ µs for one", section)
    assert all(total > 0 for total in totals)
    assert json.loads((tmp_path / "raw.json").read_text())[0]["database"] == database_kind
    if database_kind == "postgresql":  # every throw-away database is gone
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                (f"wf_writecost_{proc.pid}%",)).fetchall()
        assert left == []
