"""GET /dashboard: server-rendered, self-contained, and its numbers are the summary's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from serverutil import start_server, stop_server


def seed(app):
    records = [{"source": f"s{i % 2}", "category": f"cat-{i % 3}", "payload": {"priority": "bad" if i % 5 == 0 else i}}
               for i in range(20)]
    ids = [r["id"] for r in app.post_json("/records/batch", {"records": records}).json["items"]]
    for rid in ids[:12]:
        app.post(f"/records/{rid}/process")
    app.post_json("/records", {"source": "x", "category": "<script>alert(1)</script>", "payload": {"priority": []}})
    return ids


def shown_numbers(html: str) -> tuple[dict, dict]:
    totals = {m[0]: int(m[1]) for m in re.findall(r'data-total="(\w+)"><b>(\d+)</b>', html)}
    categories = {}
    for name, cells in re.findall(r'<tr data-category="([^"]*)">(.*?)</tr>', html, re.S):
        categories[name] = {f: int(v) for f, v in re.findall(r'data-field="(\w+)">(\d+)<', cells)}
    return totals, categories


def expected_numbers(summary: dict) -> tuple[dict, dict]:
    from html import escape

    return summary["totals"], {escape(c["category"]): {k: c[k] for k in ("count", "pending", "processed", "failed")}
                               for c in summary["by_category"]}


def test_dashboard_shows_the_summary_numbers(app):
    ids = seed(app)
    failed = app.post(f"/records/{ids[0]}/process", expect_errors=True)  # already failed: 409
    assert failed.status_int == 409
    resp = app.get("/dashboard")
    assert resp.content_type == "text/html"
    html = resp.text
    assert shown_numbers(html) == expected_numbers(app.get("/reports/summary").json)
    assert "<script" not in html.replace("&lt;script&gt;", "")  # no JavaScript, and user data is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<svg") == 2 and 'data-chart="hour"' in html and 'data-chart="day"' in html
    assert f'href="/records/{ids[0]}"' in html and "invalid priority" in html
    assert 'name="viewport"' in html
    assert not re.search(r'(src|href)="https?://', html)  # no external assets


def test_dashboard_security_headers(app):
    headers = app.get("/dashboard").headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"


def test_dashboard_of_an_empty_database(app):
    html = app.get("/dashboard").text
    assert "No records yet." in html and "No failures." in html
    assert shown_numbers(html)[0] == {"all": 0, "pending": 0, "processed": 0, "failed": 0}


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must install it")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return path


@pytest.mark.server
def test_dashboard_in_a_real_browser(make_app, database_url, tmp_path):
    browser = chromium()
    seed(make_app())
    server = start_server(database_url, tmp_path / "logs", workers=1)
    try:
        url = f"{server.base_url}/dashboard"
        base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
        from serverutil import request

        _, _, body = request("GET", f"{server.base_url}/reports/summary")
        import json

        assert shown_numbers(dom) == expected_numbers(json.loads(body))
        for width, height in ((1280, 1000), (390, 844)):
            shot = tmp_path / f"dashboard-{width}.png"
            subprocess.run([*base, f"--window-size={width},{height}", f"--screenshot={shot}", url],
                           capture_output=True, timeout=90)
            assert shot.exists() and shot.stat().st_size > 5000
    finally:
        stop_server(server)
