"""Schemathesis against the real server, on SQLite and PostgreSQL, driven by /openapi.json.

Every operation is exercised (examples, coverage, fuzzing and stateful phases,
following the document's links from a created record) with three checks: no
5xx, only documented status codes, and bodies that match the documented
schemas. Bounded by examples per operation and a subprocess timeout. What it
finds is fixed in the service, never excluded here.

Replay a failure with the seed the run prints:
`WORKFLOW_SCHEMATHESIS_SEED=<seed> pytest tests/test_schemathesis.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DIALECTS, empty_database_url
from serverutil import ROOT, start_server, stop_server
from serverutil import request as http

pytestmark = pytest.mark.server

API_KEY = "schemathesis-key-0123456789"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
MAX_EXAMPLES = int(os.environ.get("WORKFLOW_SCHEMATHESIS_EXAMPLES", "25"))
SEED = os.environ.get("WORKFLOW_SCHEMATHESIS_SEED", "20261126")
RUN_TIMEOUT = 240  # seconds; a normal run takes well under a minute


def schemathesis_command() -> list[str]:
    """The schemathesis CLI of this virtualenv."""
    found = Path(sys.executable).with_name("schemathesis")
    if found.exists():
        return [str(found)]
    cli = shutil.which("schemathesis")
    if cli is None:
        pytest.fail("schemathesis is not installed: pip install -r requirements-dev.txt")
    return [cli]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_schemathesis_finds_nothing(dialect, request, tmp_path_factory, tmp_path):
    # SQLite without API_KEY (writes open); PostgreSQL with a key that every request sends.
    url = empty_database_url(dialect, request, tmp_path_factory)
    variables = {"API_KEY": API_KEY} if dialect == "postgresql" else {}
    server = start_server(url, tmp_path / "logs", workers=2, **variables)
    document = json.loads(http("GET", f"{server.base_url}/openapi.json")[2])
    operations = sum(len(item) for item in document["paths"].values())
    argv = [
        *schemathesis_command(), "run", f"{server.base_url}/openapi.json",
        "--checks", CHECKS,
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", SEED,
        # One worker: with two, hypothesis inside schemathesis calls ast.parse from two threads,
        # which on CPython 3.11.7 can fail with "SystemError: AST constructor recursion depth
        # mismatch" (python/cpython#106905) - a crash of the tool, not a finding about the API.
        "--workers", "1",
        "--request-timeout", "10",
        "--generation-database", "none",
        "--no-color",
    ]
    if variables:
        argv += ["--header", f"X-API-Key: {API_KEY}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), SCHEMATHESIS_HOOKS="schemathesis_hooks")
    try:
        run = subprocess.run(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=RUN_TIMEOUT)
    finally:
        stop_server(server)
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.log").write_text(output, encoding="utf-8")
    assert run.returncode == 0, f"schemathesis found problems ({dialect}):\n{output[-20000:]}\n{server.describe()}"
    # Every operation was tested, but GET /openapi.json itself, which schemathesis leaves out.
    tested = operations - 1
    assert f"{tested} selected / {tested} total" in output and f"Tested: {tested}\n" in output, output[:2000]
