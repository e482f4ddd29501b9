"""/docs in a real browser: Debian's headless Chromium renders every operation and "Try it out" works.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in NUL on file descriptors 3 and 4), so the test needs no
driver, no websocket library and no network. The page may request nothing
outside the server under test, and its Content-Security-Policy must report no
violation.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from serverutil import request, start_server, stop_server

pytestmark = pytest.mark.server

API_KEY = "browser-test-key-0123456789"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--window-size=1280,2000",
    "--remote-debugging-pipe",
)
STEP_TIMEOUT = 30.0

# Runs in the page before its own scripts (DevTools-injected code is not subject to the CSP).
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def chromium_binary() -> str:
    """Debian's chromium; CI must have it (see .ci/run), elsewhere the test skips without it."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        message = "chromium not found: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


class Chromium:
    """A headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def as_fds_3_and_4():  # the pipe protocol's fixed descriptors, in the child only
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.stderr = open(profile.parent / "chromium.err", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr,
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4, start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id, self._buffer = 0, b""
        self.events: list[dict] = []
        self.session = None
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def call(self, method: str, timeout: float = STEP_TIMEOUT, **params) -> dict:
        """Send one command and wait (bounded) for its answer; events seen meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for answer in self._read(deadline, method):
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise AssertionError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
                self.events.append(answer)

    def _read(self, deadline: float, method: str) -> list[dict]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"no answer from chromium to {method} (exit code {self.proc.poll()})")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise AssertionError(f"chromium closed the pipe during {method}")
                self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(part) for part in complete]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = STEP_TIMEOUT):
        """Poll an expression until it is truthy (bounded); return its value."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.1) + 1):
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def screenshot(self, path: Path) -> None:
        """Save a PNG of the whole page."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """Ask the browser to quit, then make sure its process group is gone."""
        try:
            self.call("Browser.close", timeout=5)
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server on SQLite, with an API key so that "Try it out" must send it on writes."""
    tmp = tmp_path_factory.mktemp("browser")
    running = start_server(f"sqlite:///{tmp / 'workflow.db'}", tmp / "logs", workers=1, API_KEY=API_KEY)
    yield running
    stop_server(running)


@pytest.fixture
def browser(tmp_path):
    """A fresh headless Chromium with an empty profile."""
    chromium = Chromium(chromium_binary(), tmp_path / "profile")
    yield chromium
    chromium.close()


def click(selector: str) -> str:
    """JavaScript clicking the first element matching `selector`, or throwing."""
    return (f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" if (!el) throw new Error('not found: ' + {json.dumps(selector)}); el.click(); return true; }})()")


def response_status(operation: str) -> str:
    """JavaScript reading the live response status shown under an operation."""
    selector = f"#{operation} .live-responses-table tr.response .response-col_status"
    return (f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " return el ? el.textContent.trim() : ''; })()")


def test_docs_render_and_try_it_out_works_offline(server, browser, tmp_path):
    base = server.base_url
    status, _, body = request("GET", f"{base}/openapi.json")
    assert status == 200
    document = json.loads(body)
    operations = {(path, method) for path, item in document["paths"].items() for method in item}

    browser.call("Page.enable")
    browser.call("Network.enable")
    browser.call("Runtime.enable")
    browser.call("Page.addScriptToEvaluateOnNewDocument", source=RECORD_CSP_VIOLATIONS)
    browser.call("Page.navigate", url=f"{base}/docs")

    # Every operation of the document is on the page.
    browser.wait_for(f"document.querySelectorAll('.opblock').length >= {len(operations)}", "the operations")
    rendered = browser.evaluate(
        "Array.from(document.querySelectorAll('.opblock')).map(el => ["
        " el.querySelector('.opblock-summary-path').getAttribute('data-path'),"
        " el.querySelector('.opblock-summary-method').textContent.trim().toLowerCase()])")
    assert {tuple(pair) for pair in rendered} == operations
    assert document["info"]["title"] in browser.evaluate("document.title")

    # "Try it out" on GET /health.
    health = "operations-service-getHealth"
    browser.evaluate(click(f"#{health} .opblock-summary-control"))
    browser.wait_for(f"!!document.querySelector('#{health} .try-out__btn')", "the Try it out button")
    browser.evaluate(click(f"#{health} .try-out__btn"))
    browser.wait_for(f"!!document.querySelector('#{health} .execute')", "the Execute button")
    browser.evaluate(click(f"#{health} .execute"))
    assert browser.wait_for(response_status(health), "the /health response") == "200"

    # A write with the API key, as a user would after "Authorize": the example body, then 201.
    browser.evaluate(f"window.ui.preauthorizeApiKey('ApiKeyAuth', {json.dumps(API_KEY)}) && true")
    create = "operations-records-createRecord"
    browser.evaluate(click(f"#{create} .opblock-summary-control"))
    browser.wait_for(f"!!document.querySelector('#{create} .try-out__btn')", "the Try it out button")
    browser.evaluate(click(f"#{create} .try-out__btn"))
    browser.wait_for(f"!!document.querySelector('#{create} .execute')", "the Execute button")
    browser.evaluate(click(f"#{create} .execute"))
    assert browser.wait_for(response_status(create), "the POST /records response") == "201"
    browser.screenshot(tmp_path / "docs.png")

    # Nothing left the machine: every request the page made went to the server under test.
    urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert any(u.startswith(f"{base}/docs/assets/swagger-ui-bundle.js") for u in urls), urls
    assert any(u == f"{base}/records" for u in urls), urls
    outside = [u for u in urls if not u.startswith(f"{base}/") and not u.startswith("data:")]
    assert outside == []
    assert browser.evaluate("window.__cspViolations") == []
    assert (tmp_path / "docs.png").stat().st_size > 10_000
