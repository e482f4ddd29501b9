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
