"""API keys on writes, request ids, and JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from workflow_service.middleware import JSONFormatter

KEYS = "old-key-123456,new-key-654321"
WRITES = [
    ("POST", "/records"),
    ("POST", "/records/00000000-0000-4000-8000-000000000000/process"),
    ("PUT", "/records"),
    ("PATCH", "/records"),
    ("DELETE", "/records/00000000-0000-4000-8000-000000000000"),
    ("POST", "/no/such/route"),
]


@pytest.fixture
def keyed(make_app):
    return make_app(API_KEY=KEYS)


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize("key", [None, "", "wrong-key-000000", "old-key-12345", "old-key-1234567"])
def test_writes_without_a_valid_key_are_401_before_anything_else(keyed, method, path, key):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    resp = keyed.request(path, method=method, body=b"{not json", headers=headers, expect_errors=True)
    assert resp.status_int == 401
    assert resp.json["error"]["code"] == "UNAUTHORIZED"
    assert "X-API-Key" in resp.headers["WWW-Authenticate"]
    assert "old-key" not in resp.text and "new-key" not in resp.text


@pytest.mark.parametrize("key", ["old-key-123456", "new-key-654321"])
def test_every_rotated_key_is_accepted(keyed, key):
    resp = keyed.post_json("/records", {"source": "a", "category": "b", "payload": {}}, headers={"X-API-Key": key})
    assert resp.status_int == 201
    process = keyed.post(f"/records/{resp.json['id']}/process", headers={"X-API-Key": key})
    assert process.json["status"] == "processed"


@pytest.mark.parametrize("path", ["/health", "/version", "/records", "/reports/summary"])
def test_reads_stay_public(keyed, path):
    assert keyed.get(path).status_int == 200


def test_no_key_configured_means_open_writes(app):
    assert app.post_json("/records", {"source": "a", "category": "b", "payload": {}}).status_int == 201


@pytest.mark.parametrize("given", ["abc", "trace-123", "a.b:c_d-e", "x" * 128])
def test_valid_request_id_is_kept(app, given):
    assert app.get("/health", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given


@pytest.mark.parametrize("given", ["", "x" * 129, "has space", "semi;colon", "ünï", "a/b"])
def test_invalid_request_id_is_replaced_by_a_uuid(app, given):
    got = app.get("/health", headers={"X-Request-ID": given}).headers["X-Request-ID"]
    assert got != given
    assert str(uuid.UUID(got)) == got


def test_errors_carry_the_request_id(app):
    resp = app.get("/nope", headers={"X-Request-ID": "trace-404"}, expect_errors=True)
    assert resp.headers["X-Request-ID"] == "trace-404" and resp.json["request_id"] == "trace-404"


def capture_logs():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("workflow")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    return stream, lambda: (logger.removeHandler(handler), logger.setLevel(old_level))


def test_json_log_lines_for_requests_and_transitions_never_show_the_key(keyed):
    stream, restore = capture_logs()
    try:
        headers = {"X-API-Key": "new-key-654321", "X-Request-ID": "trace-log-1"}
        created = keyed.post_json("/records", {"source": "a", "category": "b", "payload": {}}, headers=headers)
        keyed.post(f"/records/{created.json['id']}/process", headers=headers)
        keyed.post_json("/records", {}, headers={"X-API-Key": "bad-key-0000000"}, expect_errors=True)
    finally:
        restore()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ends = [line for line in lines if line["event"] == "request.end"]
    assert [(e["method"], e["path"], e["status_code"]) for e in ends] == [
        ("POST", "/records", 201),
        ("POST", f"/records/{created.json['id']}/process", 200),
        ("POST", "/records", 401),
    ]
    assert ends[0]["request_id"] == "trace-log-1" and ends[0]["duration_ms"] >= 0
    transitions = [line for line in lines if line["event"] == "record.transition"]
    assert transitions and transitions[0]["request_id"] == "trace-log-1"
    assert "654321" not in stream.getvalue() and "bad-key" not in stream.getvalue()
