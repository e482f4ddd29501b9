"""SPEC.md's error table: every code, in the envelope, on both databases."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import make_settings

from workflow import create_app


def assert_envelope(resp, status: int, code: str):
    assert resp.status_int == status, resp.body
    assert resp.content_type == "application/json"
    body = resp.json
    assert set(body) == {"error", "request_id"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert "Traceback" not in resp.text and "SELECT" not in resp.text.upper().split("MESSAGE")[0]
    return body["error"]


def post_raw(app, path, body: bytes, content_type="application/json", **kw):
    return app.post(path, body, headers={"Content-Type": content_type}, expect_errors=True, **kw)


def test_400_unparseable_json(app):
    error = assert_envelope(post_raw(app, "/records", b'{"source": '), 400, "BAD_REQUEST")
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize("body", [b"", b"   ", b"\xff\xfe{}", b"{'single': 'quotes'}"])
def test_400_other_unreadable_bodies(app, body):
    assert_envelope(post_raw(app, "/records", body), 400, "BAD_REQUEST")


def test_401_on_writes_when_a_key_is_configured(make_app):
    app = make_app(API_KEY="k" * 16)
    error = assert_envelope(app.post_json("/records", {}, expect_errors=True), 401, "UNAUTHORIZED")
    assert error["message"]


def test_404_unknown_route_and_record(app):
    assert_envelope(app.get("/nowhere", expect_errors=True), 404, "NOT_FOUND")
    assert_envelope(app.post("/records/x/unknown", expect_errors=True), 404, "NOT_FOUND")
    assert_envelope(app.get("/records/00000000-0000-4000-8000-000000000000", expect_errors=True), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/records", {"GET", "POST"}),
        ("PUT", "/records/00000000-0000-4000-8000-000000000000", {"GET"}),
        ("GET", "/records/00000000-0000-4000-8000-000000000000/process", {"POST"}),
        ("POST", "/health", {"GET"}),
        ("PATCH", "/reports/summary", {"GET"}),
    ],
)
def test_405_with_allow_header(app, method, path, allowed):
    resp = app.request(path, method=method, expect_errors=True)
    assert_envelope(resp, 405, "METHOD_NOT_ALLOWED")
    assert allowed <= {m.strip() for m in resp.headers["Allow"].split(",")}


def test_409_conflict_names_the_status(app, create_record):
    record = create_record()
    app.post(f"/records/{record['id']}/process")
    error = assert_envelope(app.post(f"/records/{record['id']}/process", expect_errors=True), 409, "CONFLICT")
    assert error["details"] == {"status": "processed"}


def test_413_by_content_length_and_by_actual_size(make_app):
    app = make_app(MAX_BODY_BYTES="2048")
    big = json.dumps({"source": "a", "category": "b", "payload": {"x": "y" * 4000}}).encode()
    error = assert_envelope(post_raw(app, "/records", big), 413, "PAYLOAD_TOO_LARGE")
    assert error["details"] == {"max_bytes": 2048}
    assert app.get("/records").json["total"] == 0


def test_413_default_limit_is_one_mebibyte(app):
    big = json.dumps({"source": "a", "category": "b", "payload": {"x": "y" * (1024 * 1024)}}).encode()
    assert_envelope(post_raw(app, "/records", big), 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_415_non_json_body(app, content_type):
    body = b'{"source": "a", "category": "b", "payload": {}}'
    assert_envelope(post_raw(app, "/records", body, content_type), 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json"])
def test_json_media_type_variants_are_accepted(app, content_type):
    body = b'{"source": "a", "category": "b", "payload": {}}'
    assert post_raw(app, "/records", body, content_type).status_int == 201


def test_422_lists_every_problem_with_location(app):
    resp = app.post_json("/records", {"source": "", "category": "c" * 129, "payload": [1], "extra": 1},
                         expect_errors=True)
    error = assert_envelope(resp, 422, "VALIDATION_ERROR")
    assert {tuple(d["loc"]) for d in error["details"]} == {
        ("body", "source"), ("body", "category"), ("body", "payload"), ("body", "extra"),
    }
    assert all(d["message"] for d in error["details"])


def test_422_missing_fields_and_wrong_top_level_type(app):
    error = assert_envelope(app.post_json("/records", {}, expect_errors=True), 422, "VALIDATION_ERROR")
    assert sorted(d["loc"] for d in error["details"]) == [["body", "category"], ["body", "payload"], ["body", "source"]]
    error = assert_envelope(app.post_json("/records", [1, 2], expect_errors=True), 422, "VALIDATION_ERROR")
    assert error["details"][0]["loc"] == ["body"]


def test_length_limits_count_characters_not_bytes(app):
    ok = app.post_json("/records", {"source": "é" * 128, "category": "😀" * 128, "payload": {}})
    assert ok.status_int == 201
    resp = app.post_json("/records", {"source": "é" * 129, "category": "x", "payload": {}}, expect_errors=True)
    assert_envelope(resp, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "body",
    [
        b'{"source": "a", "category": "b", "payload": {"x": NaN}}',
        b'{"source": "a", "category": "b", "payload": {"x": Infinity}}',
        b'{"source": "a", "category": "b", "payload": {"x": -Infinity}}',
        b'{"source": "a", "category": "b", "payload": {"x": 1e400}}',
        b'{"source": "a", "category": "b", "payload": {"x": "\\u0000"}}',
        b'{"source": "a\\u0000", "category": "b", "payload": {}}',
        b'{"source": "a", "category": "b", "payload": {"\\ud800": 1}}',
        b'{"source": "a", "category": "b", "payload": {"x": "\\udfff"}}',
        b'{"source": "a", "category": "b", "payload": ' + b"[" * 20000 + b"]" * 20000 + b"}",
        b'{"source": "a", "category": "b", "payload": ' + b'{"a":' * 100 + b"1" + b"}" * 100 + b"}",
        b'{"source": "a", "category": "b", "payload": {"x": ' + b"9" * 5000 + b"}}",
    ],
    ids=["nan", "inf", "-inf", "1e400", "nul-payload", "nul-source", "surrogate-key", "surrogate-value",
         "deep-20000", "deep-100", "huge-int"],
)
def test_hostile_json_is_422_and_stores_nothing(app, body):
    assert_envelope(post_raw(app, "/records", body), 422, "VALIDATION_ERROR")
    assert app.get("/records").json["total"] == 0


def test_boolean_priority_is_not_a_number(app, create_record):
    record = create_record(payload={"priority": False})
    assert app.post(f"/records/{record['id']}/process").json["error"] == "invalid priority"


def test_a_body_that_cannot_be_rendered_is_a_500_in_the_envelope(database_url, caplog):
    from webtest import TestApp

    wsgi = create_app(make_settings(database_url))

    class Unrenderable:
        def on_get(self, req, resp):
            resp.media = {"amount": object()}

    wsgi.add_route("/unrenderable", Unrenderable())
    with caplog.at_level(logging.INFO, logger="workflow"):
        resp = TestApp(wsgi).get("/unrenderable", headers={"X-Request-ID": "render-1"}, expect_errors=True)
    error = assert_envelope(resp, 500, "INTERNAL_ERROR")
    assert resp.headers["X-Request-ID"] == "render-1" and resp.json["request_id"] == "render-1"
    assert "object" not in resp.text
    ends = [r for r in caplog.records if r.getMessage() == "request.end" and r.fields["path"] == "/unrenderable"]
    assert [r.fields["status_code"] for r in ends] == [500]
    assert error["message"] == "internal server error"
    wsgi.db.close()


def test_500_is_an_envelope_without_internals(database_url, caplog):
    def explode(payload, record):
        raise RuntimeError("processor exploded")

    wsgi = create_app(make_settings(database_url))
    from webtest import TestApp

    app = TestApp(wsgi)

    class Boom:
        def on_get(self, req, resp):
            raise RuntimeError("SELECT secret FROM internals")

    wsgi.add_route("/boom", Boom())
    with caplog.at_level(logging.ERROR, logger="workflow"):
        resp = app.get("/boom", expect_errors=True)
    error = assert_envelope(resp, 500, "INTERNAL_ERROR")
    assert "secret" not in resp.text and "internals" not in resp.text
    assert error["message"] == "internal server error"
    assert any("SELECT secret" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    wsgi.db.close()


def test_503_when_the_database_is_unreachable(tmp_path):
    from webtest import TestApp

    missing = tmp_path / "no" / "such" / "dir" / "db.sqlite"
    wsgi = create_app(make_settings(f"sqlite:///{missing}"))
    app = TestApp(wsgi)
    assert_envelope(app.get("/records", expect_errors=True), 503, "SERVICE_UNAVAILABLE")
    health = app.get("/health", expect_errors=True)
    assert health.status_int == 503
    assert health.json["status"] == "unhealthy" and health.json["database"] == "disconnected"
    assert health.json["error"]


def test_503_when_postgresql_is_down_never_leaks_the_password():
    from webtest import TestApp

    wsgi = create_app(make_settings("postgresql://user:sup3rsecret@127.0.0.1:1/db", DB_TIMEOUT_SECONDS="2"))
    app = TestApp(wsgi)
    health = app.get("/health", expect_errors=True)
    assert health.status_int == 503
    assert "sup3rsecret" not in health.text
    resp = app.get("/records", expect_errors=True)
    assert_envelope(resp, 503, "SERVICE_UNAVAILABLE")
    assert "sup3rsecret" not in resp.text
    wsgi.db.close()
