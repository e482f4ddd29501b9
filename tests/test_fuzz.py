"""Hostile input, generated: no 5xx, every rejection in the envelope, nothing stored by a rejected request."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(["\x00", "\ud800", "\udfff", "é", "😀", "\n", '"', "\\", "'", "%", ";"]),
            max_size=10),
    st.sampled_from(["", " ", "x" * 129, "x" * 5000, "0001-01-01", "9999-12-31T23:59:59-14:00",
                     "0001-01-01T00:00:00+14:00", "2024-02-30", "-1", "1e400", "NaN", "null", "[]", "{}"]),
)
NUMBERS = st.one_of(st.integers(-(10**30), 10**30), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**400]))
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, NASTY_TEXT)
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(NASTY_TEXT, inner, max_size=4)),
                      max_leaves=12)
RECORDISH = st.fixed_dictionaries({}, optional={"source": VALUES, "category": VALUES, "payload": VALUES,
                                                "extra": VALUES})
RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"NaN", b'{"payload": Infinity}', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                     b'"\\ud800"', b"\xff\xfe", b'{"source": "a", "category": "b", "payload": {"x": 1e999}}']),
)


def encode(document) -> bytes:
    # ensure_ascii keeps lone surrogates as \\udXXX escapes, as a hostile client would send them.
    return json.dumps(document, allow_nan=True).encode()


def check(resp, allowed: set[int]):
    assert resp.status_int < 500, resp.text
    assert resp.status_int in allowed, (resp.status_int, resp.text)
    if resp.status_int >= 400:
        body = resp.json
        assert set(body) == {"error", "request_id"} and body["error"]["code"] and body["error"]["message"]


def total(app) -> int:
    return app.get("/reports/summary").json["totals"]["all"]


def test_fuzz_create(app):
    @FUZZ
    @given(st.one_of(RECORDISH.map(encode), VALUES.map(encode), RAW_BODIES))
    def run(body):
        before = total(app)
        resp = app.post("/records", body, headers={"Content-Type": "application/json"}, expect_errors=True)
        check(resp, {201, 400, 413, 422})
        assert total(app) == before + (1 if resp.status_int == 201 else 0)

    run()


def test_fuzz_batch(app):
    @FUZZ
    @given(st.one_of(st.fixed_dictionaries({"records": st.lists(RECORDISH, max_size=5)}).map(encode),
                     VALUES.map(lambda v: encode({"records": v})), RAW_BODIES))
    def run(body):
        before = total(app)
        resp = app.post("/records/batch", body, headers={"Content-Type": "application/json"}, expect_errors=True)
        check(resp, {201, 400, 413, 422})
        created = resp.json["count"] if resp.status_int == 201 else 0
        assert total(app) == before + created

    run()


QUERY_NAMES = ["status", "category", "source", "created_after", "created_before", "limit", "offset", "sort_by",
               "sort_order", "cursor", "format", "date_from", "date_to", "bucket", "unknown"]


@given(st.dictionaries(st.sampled_from(QUERY_NAMES), st.one_of(NASTY_TEXT, NUMBERS.map(str)), max_size=6),
       st.sampled_from(["/records", "/reports/summary", "/reports/timeseries"]))
@FUZZ
def test_fuzz_queries(app, params, path):
    query = "&".join(f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}" for k, v in params.items())
    resp = app.get(f"{path}?{query}", expect_errors=True)
    check(resp, {200, 422})


@given(NASTY_TEXT, NASTY_TEXT)
@FUZZ
def test_fuzz_headers(app, request_id, key):
    headers = {}
    for name, value in (("X-Request-ID", request_id), ("Idempotency-Key", key)):
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            continue  # not sendable as an HTTP header
        if "\n" not in value and "\r" not in value and "\x00" not in value:
            headers[name] = value
    resp = app.post_json("/records", {"source": "s", "category": "c", "payload": {}}, headers=headers,
                         expect_errors=True)
    check(resp, {201, 409, 422})
    assert resp.headers["X-Request-ID"]


@given(st.sampled_from(["process", "retry", "events", ""]), NASTY_TEXT)
@FUZZ
def test_fuzz_record_ids(app, action, record_id):
    path = f"/records/{quote(record_id, safe='', errors='surrogatepass')}" + (f"/{action}" if action else "")
    method = "GET" if action in ("events", "") else "POST"
    resp = app.request(path, method=method, expect_errors=True)
    check(resp, {200, 404, 405})
