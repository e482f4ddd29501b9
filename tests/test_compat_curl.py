"""docs/compatibility.md: every curl example of the old README, run with real curl against a real server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DIALECTS, empty_database_url
from serverutil import ROOT, start_server, stop_server
from serverutil import request as http

pytestmark = pytest.mark.server

DOC = ROOT / "docs" / "compatibility.md"
DOC_BASE = "http://localhost:8000"
API_KEY = "compat-test-key-0123456789"
EXPECT_RE = re.compile(r"^<!-- expect: (\d{3}) -->$")
SERVER_RE = re.compile(r"^<!-- server: (open|api-key) -->$")
MODES = ("open", "api-key")


@dataclass(frozen=True)
class Example:
    """One fenced bash block of the doc."""

    line: int
    mode: str
    status: int
    command: str


def parse_examples(text: str) -> list[Example]:
    """The bash blocks of the doc with their expected status and server mode; strict about the format."""
    examples, mode, expect, block, start = [], "open", None, None, 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if block is not None:
            if line == "```":
                assert expect is not None, f"{DOC.name}:{start}: bash block without <!-- expect: STATUS --> above"
                examples.append(Example(start, mode, expect, "\n".join(block).strip()))
                block, expect = None, None
            else:
                block.append(raw)
            continue
        if line == "```bash":
            block, start = [], number
        elif EXPECT_RE.match(line):
            expect = int(EXPECT_RE.match(line).group(1))
        elif SERVER_RE.match(line):
            mode = SERVER_RE.match(line).group(1)
        elif line and expect is not None:
            raise AssertionError(f"{DOC.name}:{number}: text between <!-- expect --> and its bash block")
    assert block is None, f"{DOC.name}:{start}: unterminated bash block"
    return examples


EXAMPLES = parse_examples(DOC.read_text(encoding="utf-8")) if DOC.exists() else []


def require_curl() -> str:
    """The curl executable; never installs anything."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not on PATH: these tests run the documented examples with real curl; "
                    "install curl (nothing is installed by the tests)")
    return curl


# ---------------------------------------------------------------- the doc itself


def test_doc_exists_and_has_examples():
    assert DOC.exists(), f"{DOC} is missing"
    assert len(EXAMPLES) >= 30
    assert {e.mode for e in EXAMPLES} == set(MODES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"line{e.line}")
def test_each_block_is_one_curl_command_against_the_old_address(example):
    assert example.command.startswith("curl "), example.command
    assert DOC_BASE in example.command
    joined = example.command.replace("\\\n", " ")
    assert "\n" not in joined, "one command per block"
    # Our wrapper appends curl options, so the command must end in curl arguments.
    for token in ("|", "&&", ";", ">", "$("):
        assert token not in re.sub(r"'[^']*'|\"[^\"]*\"", "", joined), f"{token!r} in {example.command}"


def test_doc_covers_the_old_readme():
    commands = [e.command for e in EXAMPLES]
    text = "\n".join(commands)

    def has(pattern: str) -> bool:
        return re.search(pattern, text) is not None

    assert has(r"curl -X POST http://localhost:8000/records .*-H \"Content-Type: application/json\"")
    assert has(r'"priority": 9')
    assert "curl http://localhost:8000/records" in commands
    for name in ("status", "category"):
        assert has(rf"/records\?{name}="), name
    for name in ("created_after", "created_before"):
        assert has(rf"{name}=\d{{4}}-\d\d-\d\d[\"&]"), f"{name} with a date"
        assert has(rf"{name}=\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d"), f"{name} with a date-time"
    assert has(r"limit=\d+&offset=\d+")
    for column in ("created_at", "status", "category", "source"):
        for order in ("asc", "desc"):
            assert f"sort_by={column}&sort_order={order}" in text, (column, order)
    assert "curl http://localhost:8000/records/$ID" in commands
    assert has(r"-X POST http://localhost:8000/records/\$ID/process")
    assert "curl http://localhost:8000/reports/summary" in commands
    for name in ("status", "category", "date_from", "date_to"):
        assert has(rf"/reports/summary\?(.*&)?{name}="), name
    assert "curl http://localhost:8000/health" in commands
    assert '-H "X-API-Key: $API_KEY"' in text
    assert '-H "X-Request-ID: my-trace-123"' in text
    prose = DOC.read_text(encoding="utf-8")
    assert "422" in prose and '{"error": {"code", "message", "details"}, "request_id"}' in prose


# ---------------------------------------------------------------- the examples, for real


@pytest.fixture(scope="module", params=DIALECTS)
def servers(request, tmp_path_factory):
    """Per dialect: a server as the old service ran (no key) and one with API_KEY set."""
    started = {}
    try:
        for mode in MODES:
            url = empty_database_url(request.param, request, tmp_path_factory)
            extra = {"API_KEY": API_KEY} if mode == "api-key" else {}
            started[mode] = start_server(url, tmp_path_factory.mktemp(f"compat-{request.param}-{mode}"),
                                         workers=2, **extra)
        yield started
    finally:
        for srv in started.values():
            stop_server(srv)


def create_record_id(server, mode: str) -> str:
    """A fresh pending record for `$ID`."""
    headers = {"X-API-Key": API_KEY} if mode == "api-key" else {}
    status, _, raw = http("POST", f"{server.base_url}/records",
                          {"source": "web", "category": "invoice", "payload": {"priority": 9}}, headers=headers)
    assert status == 201, raw
    return json.loads(raw)["id"]


def run_example(example: Example, base_url: str, env: dict, workdir: Path) -> str | None:
    """Run one block with bash and real curl; None when it behaves as documented, else what went wrong."""
    body_file, header_file = workdir / f"body-{example.line}", workdir / f"headers-{example.line}"
    command = example.command.replace(DOC_BASE, base_url)
    wrapped = f"{command} -s --max-time 20 -o '{body_file}' -D '{header_file}' -w '%{{http_code}}'"
    try:
        done = subprocess.run(["bash", "-c", wrapped], env=env, cwd=workdir, capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "curl did not finish within 30 s"
    where = f"{DOC.name}:{example.line}: {example.command}"
    if done.returncode != 0:
        return f"{where}\n  curl exit {done.returncode}: {done.stderr.strip()}"
    status = done.stdout.strip()
    body = body_file.read_bytes() if body_file.exists() else b""
    if status != str(example.status):
        return f"{where}\n  expected {example.status}, got {status}: {body[:300]!r}"
    try:
        json.loads(body)
    except ValueError:
        return f"{where}\n  status {status} but the body is not JSON: {body[:300]!r}"
    headers = header_file.read_text(encoding="latin-1").lower() if header_file.exists() else ""
    if "x-request-id: my-trace-123" in example.command.lower() and "x-request-id: my-trace-123" not in headers:
        return f"{where}\n  X-Request-ID not echoed: {headers!r}"
    return None


@pytest.mark.parametrize("mode", MODES)
def test_documented_examples_answer_as_documented(servers, mode, tmp_path):
    require_curl()
    server = servers[mode]
    examples = [e for e in EXAMPLES if e.mode == mode]
    assert examples
    env = dict(os.environ, ID=create_record_id(server, mode), API_KEY=API_KEY)
    failures = [f for e in examples if (f := run_example(e, server.base_url, env, tmp_path))]
    assert not failures, f"{len(failures)} of {len(examples)} examples misbehave:\n" + "\n".join(failures)
