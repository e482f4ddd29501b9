"""`python -m workflow import FILE`: CSV, TSV, JSON, NDJSON; all rows valid or nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from serverutil import ROOT, service_env

from workflow_service.importer import ImportFailed, import_file


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("in.csv", 'source,category,payload\na,x,"{""priority"": 9}"\nb,y,\n'),
        ("in.tsv", "source\tcategory\tpriority\na\tx\t9\nb\ty\t1\n"),
        ("in.json", json.dumps([{"source": "a", "category": "x", "payload": {"priority": 9}},
                                {"source": "b", "category": "y", "payload": {}}])),
        ("in.ndjson", '{"source": "a", "category": "x", "payload": {"priority": 9}}\n'
                      '{"source": "b", "category": "y", "payload": {}}\n'),
    ],
)
def test_import_each_format(app, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    seen = []
    assert import_file(app.app.db, path, progress=lambda done, total: seen.append((done, total))) == 2
    assert seen == [(2, 2)]
    items = app.get("/records?sort_by=source&sort_order=asc").json["items"]
    assert [(r["source"], r["category"], r["status"]) for r in items] == [("a", "x", "pending"), ("b", "y", "pending")]
    assert items[0]["payload"]["priority"] in (9, "9")
    events = app.get(f"/records/{items[0]['id']}/events").json["items"]
    assert events == [dict(events[0], from_status=None, to_status="pending", request_id="import")]


def test_bad_rows_import_nothing_and_are_all_reported(app, tmp_path):
    path = tmp_path / "bad.ndjson"
    path.write_text('{"source": "a", "category": "x", "payload": {}}\n'
                    '{"source": "", "category": "x", "payload": {}}\n'
                    '{"source": "a", "payload": []}\n')
    with pytest.raises(ImportFailed) as info:
        import_file(app.app.db, path)
    assert info.value.problems == [
        "row 2: source: must be at least 1 characters",
        "row 3: category: field required",
        "row 3: payload: must be of type object",
    ]
    assert app.get("/records").json["total"] == 0


def test_batches_and_progress(app, tmp_path):
    path = tmp_path / "many.ndjson"
    path.write_text("".join(json.dumps({"source": "s", "category": "c", "payload": {"i": i}}) + "\n"
                            for i in range(25)))
    seen = []
    assert import_file(app.app.db, path, batch_size=10, progress=lambda d, t: seen.append((d, t))) == 25
    assert seen == [(10, 25), (20, 25), (25, 25)]
    assert app.get("/records").json["total"] == 25


def test_cli_import(app, database_url, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("source,category,priority\na,x,9\n")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    run = lambda *args: subprocess.run([sys.executable, "-m", "workflow", "import", *args], cwd=ROOT,  # noqa: E731
                                       env=service_env(DATABASE_URL=database_url), capture_output=True, text=True,
                                       timeout=120)
    ok = run(str(good))
    assert ok.returncode == 0, ok.stderr
    assert "imported 1 records" in ok.stdout and "imported 1/1" in ok.stderr
    failed = run(str(bad))
    assert failed.returncode == 1 and "nothing imported" in failed.stderr and "Traceback" not in failed.stderr
    missing = run(str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert app.get("/records").json["total"] == 1
