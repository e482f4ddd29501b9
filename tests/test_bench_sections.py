"""bench/'s scripts rewrite only their own section of docs/benchmarks.md (`run.write_section`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import run  # noqa: E402  (bench/run.py)


def test_a_section_is_replaced_between_its_markers_and_nothing_else_moves(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n\n<!-- results:start -->\nold\n<!-- results:end -->\nmid\n"
                   "<!-- scale:start -->\nkept\n<!-- scale:end -->\nend\n")
    run.write_section(doc, "results", "## Results", "new")
    assert doc.read_text() == ("# B\n\n<!-- results:start -->\nnew\n<!-- results:end -->\nmid\n"
                               "<!-- scale:start -->\nkept\n<!-- scale:end -->\nend\n")


def test_a_missing_section_is_appended_under_its_heading_and_a_missing_file_made(tmp_path):
    doc = tmp_path / "benchmarks.md"
    run.write_section(doc, "results", "## Results", "r")
    run.write_section(doc, "writecost", "## What a write costs", "w1")
    run.write_section(doc, "writecost", "## What a write costs", "w2")
    assert doc.read_text() == ("# Benchmarks\n\n## Results\n\n<!-- results:start -->\nr\n<!-- results:end -->\n"
                               "\n## What a write costs\n\n<!-- writecost:start -->\nw2\n<!-- writecost:end -->\n")


def test_status_counts_read_only_whole_lines_of_the_path_since_the_offset(tmp_path):
    log = tmp_path / "service.log"
    before = b'{"event": "request.end", "path": "/records", "status_code": 500}\n'
    log.write_bytes(before
                    + b'{"event": "request.end", "path": "/records", "status_code": 201}\n'
                    + b'{"event": "request.end", "path": "/health", "status_code": 200}\n'
                    + b'{"event": "request.end", "path": "/records", "status_code": 422}\n'
                    + b'{"event": "request.end", "path": "/records", "status_c')  # a line still being written
    srv = run.Server.__new__(run.Server)  # only its log: no process
    srv.log = log
    assert srv.status_counts(len(before), "/records", answered=2) == {"201": 1, "422": 1}


def _figures(rps: float) -> dict:
    return {"rps": rps, "ok_rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "non2xx": 0, "peak_mib": 40.0}


def test_the_cursor_target_compares_the_first_page_run_in_turn_with_it_not_the_first_page_scenario():
    """A machine that slows between scenarios moved the ratio (0.74× in one full run, 0.89× in turn)."""
    import argparse

    result = {"database": "sqlite", "seed_seconds": 1.0, "seed_peak_mib": [40.0], "statuses": {},
              "service_5xx": {}, "service_errors": [],
              "scenarios": {"get": {"label": "get by id", "svc": _figures(900)},
                            "first_page": {"label": "first page", "svc": _figures(1000)},
                            "cursor": {"label": "cursor page (deep)", "svc": _figures(600), "first": _figures(800)},
                            "create": {"label": "create (single)", "svc": _figures(300)}}}
    args = argparse.Namespace(records=10, duration=1, repeat=1, threads=1, connections=8)
    text = run.render([result], args, None)
    assert "- cursor page (deep) vs the first page, run in turn with it (800 req/s): **0.75×** (target ≥ 0.8×)" in text
    assert "| cursor page (deep) | 600 |" in text


def test_the_cursor_scenario_runs_the_first_page_in_turn_and_only_it_does():
    where = {key: servers for key, _, servers in run.SCENARIOS}
    assert where["cursor"] == {"svc", "first"}
    assert [key for key, servers in where.items() if "first" in servers] == ["cursor"]
    assert set(run.RUNNERS) >= set().union(*where.values())
