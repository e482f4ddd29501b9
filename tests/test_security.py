"""Secrets, CORS and security headers."""

from __future__ import annotations

import pytest

from workflow_service.config import ConfigError, settings_from_mapping


def test_cors_is_off_by_default(app):
    resp = app.get("/records", headers={"Origin": "https://evil.example"})
    assert not any(h.lower().startswith("access-control-") for h in resp.headers)
    pre = app.options("/records", headers={"Origin": "https://evil.example",
                                           "Access-Control-Request-Method": "POST"}, expect_errors=True)
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_cors_allows_only_configured_origins(make_app):
    app = make_app(CORS_ORIGINS="https://app.example.com", API_KEY="k" * 12)
    ok = app.get("/records", headers={"Origin": "https://app.example.com"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Request-ID" in ok.headers["Access-Control-Expose-Headers"]
    other = app.get("/records", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = app.options("/records", headers={"Origin": "https://app.example.com",
                                           "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "content-type, x-api-key"})
    assert pre.status_int == 200
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "x-api-key" in pre.headers["Access-Control-Allow-Headers"].lower()


@pytest.mark.parametrize("value", ["app.example.com", "ftp://x", "https://a b"])
def test_bad_cors_origins_stop_start_up(value):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        settings_from_mapping({"CORS_ORIGINS": value})


def test_api_key_never_echoed_on_any_error(make_app):
    app = make_app(API_KEY="very-secret-key-1")
    for headers in ({"X-API-Key": "very-secret-key-1x"}, {"X-API-Key": "very-secret-key-1"}):
        for resp in (app.post("/records", b"{bad", headers={**headers, "Content-Type": "application/json"},
                              expect_errors=True),
                     app.post_json("/records", {"x": 1}, headers=headers, expect_errors=True)):
            assert "very-secret-key" not in resp.text and "very-secret-key" not in str(resp.headers)


def test_settings_repr_hides_keys():
    settings = settings_from_mapping({"API_KEY": "very-secret-key-1"})
    assert "very-secret-key" not in repr(settings)
