"""The docs cannot drift: every route, setting and command is documented."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import ROOT, make_settings
from falcon import inspect

from workflow import build_parser, create_app
from workflow_service.config import Settings

README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text()

# Settings fields and the variables that set them.
VARIABLES = {field.name.upper() for field in dataclasses.fields(Settings)} - {"API_KEYS"} | {"API_KEY"}


def routes() -> list[tuple[str, str]]:
    app = create_app(make_settings("sqlite:///:memory:"))
    found = []
    for route in inspect.inspect_routes(app):
        for method in route.methods:
            if method.internal:  # Falcon's own OPTIONS responder
                continue
            found.append((method.method, re.sub(r"\{record_id\}", "{id}", route.path)))
    return found


@pytest.mark.parametrize(("method", "path"), routes())
def test_every_route_is_in_the_readme(method, path):
    assert f"`{method} {path}`" in README


@pytest.mark.parametrize("variable", sorted(VARIABLES))
def test_every_setting_is_in_the_readme_and_env_example(variable):
    assert f"`{variable}`" in README
    assert re.search(rf"^#? ?{variable}=", ENV_EXAMPLE, re.M), f"{variable} missing from .env.example"


def test_processors_variable_is_documented():
    assert "`WORKFLOW_PROCESSORS`" in README and "WORKFLOW_PROCESSORS=" in ENV_EXAMPLE


@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_every_command_is_in_the_readme_and_runbook(command):
    assert re.search(rf"^\| `{command}\b", README, re.M), f"{command} missing from the README's command table"
    assert f"workflow {command}" in RUNBOOK


def test_readme_quick_start_has_the_two_commands():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make run" in quick and "make test" in quick


def test_dockerfile_runs_unprivileged_with_migrations_and_a_health_check():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert re.search(r'^CMD \["python", "-m", "workflow", "serve"', dockerfile, re.M)
    for path in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (ROOT / path.rstrip("/")).exists(), f"Dockerfile copies missing {path}"


def test_compose_gates_the_app_on_a_healthy_database():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "condition: service_healthy" in compose and "pg_isready" in compose
    assert "postgresql://" in compose
