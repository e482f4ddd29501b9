"""Embedding: two apps in one process share nothing; mounting under a prefix works."""

from __future__ import annotations

import pytest
from conftest import make_settings
from webtest import TestApp

from workflow import create_app


def mount(prefix: str, inner):
    """A minimal WSGI dispatcher, as any host application would have."""

    def dispatcher(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == prefix or path.startswith(prefix + "/"):
            environ = dict(environ, SCRIPT_NAME=environ.get("SCRIPT_NAME", "") + prefix,
                           PATH_INFO=path[len(prefix):] or "/")
            return inner(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"host app"]

    return dispatcher


def test_two_apps_in_one_process_share_nothing(tmp_path):
    calls = []

    def counting(payload, record):
        calls.append(record["id"])
        return {"classification": "custom", "score": 1}

    first = create_app(make_settings(f"sqlite:///{tmp_path / 'a.db'}", API_KEY="first-key-0001"),
                       processors={"invoice": counting})
    second = create_app(make_settings(f"sqlite:///{tmp_path / 'b.db'}"))
    for wsgi in (first, second):
        from workflow_service.migrations import Migrator

        Migrator(wsgi.db).up()
    a, b = TestApp(first), TestApp(second)

    assert a.post_json("/records", {"source": "s", "category": "invoice", "payload": {}},
                       expect_errors=True).status_int == 401
    rec_a = a.post_json("/records", {"source": "s", "category": "invoice", "payload": {}},
                        headers={"X-API-Key": "first-key-0001"}).json
    rec_b = b.post_json("/records", {"source": "s", "category": "invoice", "payload": {"priority": 9}}).json

    assert b.get(f"/records/{rec_a['id']}", expect_errors=True).status_int == 404
    assert a.get("/records").json["total"] == 1 and b.get("/records").json["total"] == 1

    done_a = a.post(f"/records/{rec_a['id']}/process", headers={"X-API-Key": "first-key-0001"}).json
    done_b = b.post(f"/records/{rec_b['id']}/process").json
    assert done_a["classification"] == "custom" and done_a["result"] == {"classification": "custom", "score": 1}
    assert done_b["classification"] == "high"  # the built-in rule: the other app's processor is not here
    assert calls == [rec_a["id"]]
    first.db.close()
    second.db.close()


def test_mounted_under_a_prefix(database_url):
    wsgi = create_app(make_settings(database_url))
    host = TestApp(mount("/api/workflow", wsgi))
    created = host.post_json("/api/workflow/records", {"source": "s", "category": "c", "payload": {}})
    assert created.headers["Location"] == f"/api/workflow/records/{created.json['id']}"
    assert host.get(created.headers["Location"]).json["id"] == created.json["id"]
    assert host.get("/api/workflow/health").json["status"] == "healthy"
    assert host.get("/elsewhere", expect_errors=True).text == "host app"
    wsgi.db.close()


def test_processor_errors_fail_the_record_with_the_message_only(tmp_path):
    def broken(payload, record):
        raise ValueError("amount must be positive")

    def not_an_object(payload, record):
        return ["a", "list"]

    wsgi = create_app(make_settings(f"sqlite:///{tmp_path / 'p.db'}"),
                      processors={"broken": broken, "list": not_an_object})
    from workflow_service.migrations import Migrator

    Migrator(wsgi.db).up()
    app = TestApp(wsgi)
    for category, error in [("broken", "amount must be positive"), ("list", "processor returned list")]:
        rec = app.post_json("/records", {"source": "s", "category": category, "payload": {}}).json
        done = app.post(f"/records/{rec['id']}/process").json
        assert done["status"] == "failed"
        assert done["error"].startswith(error)
        assert done["score"] is None and done["classification"] is None
        assert "Traceback" not in done["error"]
    wsgi.db.close()


@pytest.mark.parametrize(("build", "limited"), [("workflow.app", True), ("workflow.create_app()", False)])
def test_the_served_app_shares_two_malloc_arenas_and_an_embedded_one_changes_nothing(tmp_path, build, limited):
    """glibc gives each thread an arena and keeps what the thread frees there; the served app's
    threads share two (workflow.limit_malloc_arenas), an embedder's process keeps glibc's default."""
    import subprocess
    import sys

    from serverutil import ROOT, service_env

    script = f"""
import ctypes, threading
import workflow
{build}
def allocate():
    kept = [bytearray(4096) for _ in range(100)]  # buffers from glibc's malloc, in this thread
    ready.wait()
ready = threading.Barrier(8)
threads = [threading.Thread(target=allocate) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" section per arena, on stderr
"""
    env = service_env(DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    env.pop("MALLOC_ARENA_MAX", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    arenas = sum(line.startswith("Arena ") for line in out.stderr.splitlines())
    assert arenas == 2 if limited else arenas > 2
