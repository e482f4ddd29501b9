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
