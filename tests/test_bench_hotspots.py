"""bench/hotspots.py puts py-spy's samples in the right layer and counts only the workers' samples."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import hotspots  # noqa: E402  (bench/hotspots.py)

MASTER = 'process 100:"python -m gunicorn workflow:app"'
WORKER = 'process 101:"python -m gunicorn workflow:app"'
OTHER_WORKER = 'process 102:"python -m gunicorn workflow:app"'
HANDLE = "ThreadWorker.handle (gunicorn/workers/gthread.py:553);App.__call__ (falcon/app.py:562)"


@pytest.mark.parametrize(("frame", "layer"), [
    ("SQLiteDatabase._unit (workflow_service/db.py:317)", "db"),
    ("RequestContext.process_response (workflow_service/middleware.py:50)", "middleware"),
    ("execute (psycopg/cursor.py:97)", "db"),
    ("get (ceiling_app.py:40)", "ceiling app"),
    ("App.__call__ (falcon/app.py:562)", "falcon"),
    ("Request.__init__ (gunicorn/http/message.py:506)", "gunicorn"),
    ("JSONEncoder.iterencode (json/encoder.py:258)", None),
    ("App.__call__ (fastapi/applications.py:1054)", "fastapi"),
    ("create_record (app.py:120)", "peer app"),
    ("Session.execute (sqlalchemy/orm/session.py:2306)", "sqlalchemy"),
    ("not a frame", None),
])
def test_a_frame_belongs_to_the_layer_its_file_names(frame, layer):
    assert hotspots.layer_of(frame) == layer


def test_samples_go_to_their_innermost_layer_and_the_master_is_left_out():
    raw = [
        # the standard library's time goes to its caller: json under records.py is records
        f"{WORKER};{HANDLE};on_post (workflow_service/records.py:120);JSONEncoder.iterencode (json/encoder.py:258) 30",
        # psycopg under db.py is db; SQL called from db.py is db
        f"{WORKER};{HANDLE};run (workflow_service/db.py:49);execute (psycopg/cursor.py:97) 10",
        f"{OTHER_WORKER};{HANDLE};tuples_sql (workflow_service/db.py:198) 20",
        f"{WORKER};{HANDLE} 15",
        f"{WORKER};ThreadWorker.run (gunicorn/workers/gthread.py:600);EpollSelector.select (selectors.py:468) 5",
        f"{WORKER};<module> (site.py:1) 2",
        f"{MASTER};Arbiter.run (gunicorn/arbiter.py:230) 99",  # gunicorn's master is not a worker
        # a frame name read while it changed, with a newline in it: neither half counts
        f"{WORKER};{HANDLE};Connection: keep-alive",
        " (Date: Thu, 03 Dec 2026 22:06:58 GMT;on_get (workflow_service/records.py:1) 7",
        "",
    ]
    summary = hotspots.summarise(raw, rate=100, requests=10, pids={101, 102})
    assert summary["samples"] == 82
    # 82 samples at 100 a second are 0.82 s of held lock, over 10 requests
    assert summary["gil_us"] == pytest.approx(82_000)
    assert {name: n for name, n, _ in summary["layers"]} == {
        "db": 30, "records": 30, "falcon": 15, "gunicorn": 5, "other": 2}
    assert dict((name, us) for name, _, us in summary["layers"])["db"] == pytest.approx(30_000)
    assert summary["lines"][0] == ("JSONEncoder.iterencode (json/encoder.py:258)", 30)


def test_no_requests_give_no_figures_per_request():
    summary = hotspots.summarise([f"{WORKER};{HANDLE} 3"], rate=100, requests=0, pids={101})
    assert summary["gil_us"] == 0 and summary["layers"] == [("falcon", 3, 0.0)]
