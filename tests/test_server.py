"""End to end: the real `python -m workflow serve` (migrations, then gunicorn) over real HTTP."""

from __future__ import annotations

import http.client as http_client
import json
import socket
import subprocess
import time
import uuid

import pytest
from conftest import DIALECTS, empty_database_url
from faultutil import gunicorn_workers
from serverutil import (
    HOST,
    ROOT,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    free_port,
    json_lines,
    serve_command,
    service_env,
    start_server,
    stop_server,
    tcp_sockets,
    wait_for_health,
)
from serverutil import request as http

pytestmark = pytest.mark.server


@pytest.fixture(scope="module", params=DIALECTS)
def server(request, tmp_path_factory):
    """One server per dialect for this module, on a fresh, unmigrated database."""
    url = empty_database_url(request.param, request, tmp_path_factory)
    srv = start_server(url, tmp_path_factory.mktemp(f"server-{request.param}"), workers=2)
    yield srv
    stop_server(srv)


def call(server, method, path, body=None, headers=None):
    """(status, headers, parsed JSON body) of one request to `server`."""
    status, hdrs, raw = http(method, server.base_url + path, body=body, headers=headers)
    assert hdrs.get("content-type", "").startswith("application/json"), (status, hdrs, raw[:300])
    return status, hdrs, json.loads(raw)


def assert_envelope(body, code):
    """The SPEC.md error envelope with `code`."""
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["request_id"], str) and body["request_id"], body


def wait_for_log(server, predicate, timeout=5.0):
    """The first JSON log line on the server's stdout matching `predicate` (bounded poll)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        for line in json_lines(server.stdout()):
            if predicate(line):
                return line
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"no matching log line within {timeout}s\n{server.describe()}")


def test_health(server):
    status, headers, body = call(server, "GET", "/health")
    assert status == 200
    assert body == {"status": "healthy", "database": "connected"}
    assert headers.get("x-request-id")


def test_create_get_process_then_conflict(server):
    status, headers, created = call(server, "POST", "/records",
                                    {"source": "web", "category": "invoice", "payload": {"priority": 9, "n": 1}})
    assert status == 201, created
    record_id = created["id"]
    assert uuid.UUID(record_id).version == 4
    assert headers["location"].endswith(f"/records/{record_id}")
    assert created["status"] == "pending"
    assert created["payload"] == {"priority": 9, "n": 1}
    assert created["processed_at"] is None
    assert created["created_at"].endswith("Z")

    status, _, fetched = call(server, "GET", f"/records/{record_id}")
    assert status == 200
    assert fetched == created

    status, _, processed = call(server, "POST", f"/records/{record_id}/process")
    assert status == 200, processed
    assert processed["status"] == "processed"
    assert processed["score"] == 9.0
    assert processed["classification"] == "high"
    assert processed["processed_at"] is not None

    status, _, conflict = call(server, "POST", f"/records/{record_id}/process")
    assert status == 409, conflict
    assert_envelope(conflict, "CONFLICT")
    assert conflict["error"]["details"]["status"] == "processed"

    status, _, after = call(server, "GET", f"/records/{record_id}")
    assert after["status"] == "processed" and after["attempts"] == processed["attempts"]


def test_list_and_summary(server):
    category = f"cat-{uuid.uuid4().hex[:8]}"
    ids = []
    for priority in (1, 5, "x"):
        status, _, rec = call(server, "POST", "/records",
                              {"source": "e2e", "category": category, "payload": {"priority": priority}})
        assert status == 201
        ids.append(rec["id"])
    status, _, failed = call(server, "POST", f"/records/{ids[2]}/process")
    assert status == 200 and failed["status"] == "failed" and failed["error"] == "invalid priority"
    assert failed["score"] is None and failed["classification"] is None

    status, _, page = call(server, "GET", f"/records?category={category}&sort_by=created_at&sort_order=asc")
    assert status == 200
    assert [r["id"] for r in page["items"]] == ids
    assert page["count"] == 3 and page["total"] == 3
    assert page["limit"] == 50 and page["offset"] == 0

    status, _, page = call(server, "GET", f"/records?category={category}&status=pending&limit=1&offset=1")
    assert status == 200
    assert page["count"] == 1 and page["total"] == 2

    status, _, summary = call(server, "GET", f"/reports/summary?category={category}")
    assert status == 200
    assert summary["totals"] == {"all": 3, "pending": 2, "processed": 0, "failed": 1}
    assert summary["by_category"] == [
        {"category": category, "count": 3, "pending": 2, "processed": 0, "failed": 1}
    ]


def test_request_id_is_echoed_and_logged(server):
    rid = f"e2e-{uuid.uuid4().hex}"
    status, headers, _ = call(server, "POST", "/records",
                              {"source": "web", "category": "invoice", "payload": {}},
                              headers={"X-Request-ID": rid})
    assert status == 201
    assert headers["x-request-id"] == rid

    line = wait_for_log(server, lambda d: d.get("event") == "request.end" and d.get("request_id") == rid)
    assert line["method"] == "POST"
    assert line["path"] == "/records"
    assert line["status_code"] == 201
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0


def test_invalid_request_id_is_replaced(server):
    status, headers, _ = call(server, "GET", "/health", headers={"X-Request-ID": "bad id with spaces"})
    assert status == 200
    assert uuid.UUID(headers["x-request-id"])


def test_unknown_route_is_a_404_envelope(server):
    rid = f"e2e-{uuid.uuid4().hex}"
    status, headers, body = call(server, "GET", "/no/such/route", headers={"X-Request-ID": rid})
    assert status == 404
    assert_envelope(body, "NOT_FOUND")
    assert body["request_id"] == rid == headers["x-request-id"]
    wait_for_log(server, lambda d: d.get("event") == "request.end" and d.get("request_id") == rid
                 and d.get("status_code") == 404)


def test_unknown_record_is_a_404_envelope(server):
    status, _, body = call(server, "GET", f"/records/{uuid.uuid4()}")
    assert status == 404
    assert_envelope(body, "NOT_FOUND")


def test_prod_without_api_key_refuses_to_start(tmp_path):
    env = service_env(DATABASE_URL=f"sqlite:///{tmp_path / 'prod.db'}", APP_ENV="prod", API_KEY="")
    started = time.monotonic()
    done = subprocess.run(serve_command(free_port()), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=20, stdin=subprocess.DEVNULL)
    assert time.monotonic() - started < 10
    assert done.returncode != 0, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "API_KEY" in lines[0]
    assert not (tmp_path / "prod.db").exists(), "refused to start, yet touched the database"


UNREACHABLE_PG = "postgresql://u:s3cretpw@127.0.0.1:1/x"  # nothing listens on port 1


@pytest.fixture
def unreachable_pg_server(tmp_path):
    """A server whose PostgreSQL refuses connections, started without migrating."""
    srv = start_server(UNREACHABLE_PG, tmp_path, migrate=False, wait=False)
    yield srv
    stop_server(srv)


def test_health_is_503_when_postgresql_is_unreachable(unreachable_pg_server):
    srv = unreachable_pg_server
    started = time.monotonic()
    status, headers, raw = wait_for_health(srv, timeout=15, statuses=(503,))
    assert time.monotonic() - started < 10, "no 503 within 10 s of starting"
    assert "s3cretpw" not in raw.decode("utf-8", "replace")
    assert "s3cretpw" not in json.dumps(headers)
    body = json.loads(raw)
    assert body["status"] == "unhealthy" and body["database"] == "disconnected", body
    assert isinstance(body.get("error"), str) and body["error"]
    assert headers.get("x-request-id")
    # Once more on a warm server: the same answer, bounded by the database timeout (5 s by default).
    t0 = time.monotonic()
    status, _, raw = http("GET", f"{srv.base_url}/health", timeout=10)
    assert status == 503 and time.monotonic() - t0 < 8
    assert "s3cretpw" not in raw.decode("utf-8", "replace")
    assert "s3cretpw" not in srv.stdout() + srv.stderr()


def test_health_fails_fast_when_postgresql_refuses_connections(unreachable_pg_server):
    srv = unreachable_pg_server
    wait_for_health(srv, timeout=15, statuses=(503,))
    t0 = time.monotonic()
    status, _, _ = http("GET", f"{srv.base_url}/health", timeout=10)
    elapsed = time.monotonic() - t0
    assert status == 503
    assert elapsed < 2, f"a refused connection took {elapsed:.1f}s to report"


# ------------------------------------------------------------------ a socket per worker


def test_each_worker_listens_on_its_own_socket_and_clients_spread_over_them(server):
    workers = gunicorn_workers(server.proc.pid)
    assert len(workers) == 2, workers
    listening = {pid: tcp_sockets(pid, TCP_LISTEN, local_port=server.port) for pid in workers}
    assert [len(inodes) for inodes in listening.values()] == [1, 1], listening
    assert len(set.union(*listening.values())) == 2, f"the workers share one socket: {listening}"
    assert not tcp_sockets(server.proc.pid, TCP_LISTEN, local_port=server.port), "the master keeps a listening socket"
    # Kept-alive connections stay with the worker that accepted them; the kernel spreads them by
    # their address, so 16 connections all on one of 2 workers happens once in 32,768 runs.
    conns = [http_client.HTTPConnection(HOST, server.port, timeout=10) for _ in range(16)]
    try:
        for conn in conns:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        held = {pid: len(tcp_sockets(pid, TCP_ESTABLISHED, local_port=server.port)) for pid in workers}
    finally:
        for conn in conns:
            conn.close()
    assert sum(held.values()) == 16, held
    assert all(held.values()), f"one worker holds every connection: {held}"


def _resident_kib(pid: int, library: str) -> int:
    """How much of `library`'s mappings is resident in process `pid`, in KiB."""
    total, current = 0, ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                current = line
            elif line.startswith("Rss:") and library in current:
                total += int(line.split()[1])
    return total


def test_the_master_compiles_the_schemas_and_the_workers_inherit_them(server):
    """gunicorn_conf.on_starting: compiling runs most of jsonschema-rs's code, and a process's RSS
    counts every page of code it has run; workers forked after it map only what validating runs."""
    batch = {"records": [{"source": "s", "category": "c", "payload": {"n": i, "tags": ["a"]}} for i in range(20)]}
    for _ in range(4):  # over kept-alive connections the kernel spreads these over both workers, or not
        assert http("POST", f"{server.base_url}/records/batch", body=batch)[0] == 201
    master = _resident_kib(server.proc.pid, "jsonschema_rs")
    workers = {pid: _resident_kib(pid, "jsonschema_rs") for pid in gunicorn_workers(server.proc.pid)}
    assert master > 4096, f"the master did not compile the schemas: {master} KiB of jsonschema-rs resident"
    assert all(kib < master / 2 for kib in workers.values()), (master, workers)


def test_no_reuse_port_shares_one_socket(tmp_path):
    srv = start_server(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "logs", extra=("--no-reuse-port",))
    try:
        shared = tcp_sockets(srv.proc.pid, TCP_LISTEN, local_port=srv.port)
        assert len(shared) == 1
        workers = gunicorn_workers(srv.proc.pid)
        assert all(tcp_sockets(pid, TCP_LISTEN, local_port=srv.port) == shared for pid in workers)
        assert http("GET", f"{srv.base_url}/health")[0] == 200
    finally:
        stop_server(srv)


@pytest.mark.parametrize("taken", [True, False], ids=["port-in-use", "port-0"])
def test_serve_refuses_a_port_it_cannot_own(tmp_path, taken):
    """With a socket per worker, a second server must not quietly share the first one's port."""
    database = tmp_path / "never.db"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the most a rival could do
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1] if taken else 0
        done = subprocess.run(serve_command(port), cwd=ROOT, env=service_env(DATABASE_URL=f"sqlite:///{database}"),
                              capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("workflow: serve: ")
    assert (f"{HOST}:{port}" if taken else "--no-reuse-port") in lines[0]
    assert not database.exists(), "refused to start, yet migrated the database"
