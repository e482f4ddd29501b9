"""Settings: defaults, every variable of the SPEC, bad values, `.env`, and the CLI's one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from urllib.parse import parse_qsl, urlsplit

import pytest
from conftest import ROOT

from workflow_service.config import ConfigError, Settings, load_settings, read_env_file, settings_from_mapping
from workflow_service.db import postgres_conninfo

VARIABLES = ("DATABASE_URL", "LOG_LEVEL", "APP_ENV", "PROJECT_NAME", "APP_VERSION", "API_KEY",
             "GIT_COMMIT", "MAX_BODY_BYTES", "DB_TIMEOUT_SECONDS", "MAX_ATTEMPTS", "RETRY_BASE_SECONDS",
             "IDEMPOTENCY_TTL_HOURS", "CATEGORY_SCHEMAS_DIR", "WEB_CONCURRENCY")


# ------------------------------------------------------------------ defaults and parsing


def test_defaults():
    s = settings_from_mapping({})
    assert s.database_url == "sqlite:///./workflow.db"
    assert s.dialect == "sqlite"
    assert s.log_level == "INFO"
    assert s.app_env == "dev"
    assert s.project_name == "Workflow Service"
    assert s.app_version == "0.1.0"
    assert s.api_keys == ()
    assert s.git_commit == "unknown"
    assert s.max_body_bytes == 1024 * 1024
    assert s.db_timeout_seconds == 5.0
    assert s == Settings()


def test_blank_values_mean_default():
    assert settings_from_mapping({name: "  " for name in VARIABLES}) == Settings()


def test_every_variable_is_parsed():
    s = settings_from_mapping({
        "DATABASE_URL": " postgresql://u:p@db.example:5433/app?pool_size=5&max_overflow=7 ",
        "LOG_LEVEL": "debug",
        "APP_ENV": "Staging",
        "PROJECT_NAME": "My Flow",
        "APP_VERSION": "2.3.4",
        "API_KEY": "key-one-123456",
        "GIT_COMMIT": "abc1234",
        "MAX_BODY_BYTES": " 2048 ",
        "DB_TIMEOUT_SECONDS": "2.5",
    })
    assert s.database_url == "postgresql://u:p@db.example:5433/app?pool_size=5&max_overflow=7"
    assert s.dialect == "postgresql"
    assert s.log_level == "DEBUG"
    assert s.app_env == "staging"
    assert s.project_name == "My Flow"
    assert s.app_version == "2.3.4"
    assert s.api_keys == ("key-one-123456",)
    assert s.git_commit == "abc1234"
    assert s.max_body_bytes == 2048
    assert s.db_timeout_seconds == 2.5


def test_engine_variables_are_parsed(tmp_path):
    s = settings_from_mapping({
        "MAX_ATTEMPTS": "7",
        "RETRY_BASE_SECONDS": "0.5",
        "IDEMPOTENCY_TTL_HOURS": "48",
        "CATEGORY_SCHEMAS_DIR": str(tmp_path),
    })
    assert (s.max_attempts, s.retry_base_seconds, s.idempotency_ttl_hours) == (7, 0.5, 48.0)
    assert s.category_schemas_dir == str(tmp_path)


def test_settings_cover_every_spec_variable():
    names = {f.name for f in fields(Settings)}
    assert {"database_url", "log_level", "app_env", "project_name", "app_version", "api_keys",
            "git_commit", "max_body_bytes"} <= names


@pytest.mark.parametrize("level", ["DEBUG", "info", "Warning", "ERROR", "critical"])
def test_log_levels(level):
    assert settings_from_mapping({"LOG_LEVEL": level}).log_level == level.upper()


@pytest.mark.parametrize("url", [
    "sqlite:///./workflow.db", "sqlite:////tmp/abs.db", "postgresql://localhost/db", "postgres://h/db",
    "postgresql+psycopg://h/db", "postgresql://h/db?pool_size=0&max_overflow=1000",
])
def test_good_database_urls(url):
    assert settings_from_mapping({"DATABASE_URL": url}).database_url == url


def test_comma_separated_api_keys():
    s = settings_from_mapping({"API_KEY": " first-key-1 , second-key-2,,third-key-3 "})
    assert s.api_keys == ("first-key-1", "second-key-2", "third-key-3")


def test_api_keys_not_in_repr():
    s = settings_from_mapping({"API_KEY": "super-secret-key-42"})
    assert "super-secret-key-42" not in repr(s)


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize("name, value", [
    ("LOG_LEVEL", "LOUD"),
    ("LOG_LEVEL", "TRACE"),
    ("APP_ENV", "production"),
    ("APP_ENV", "test"),
    ("MAX_BODY_BYTES", "lots"),
    ("MAX_BODY_BYTES", "1.5"),
    ("MAX_BODY_BYTES", "1e6"),
    ("MAX_BODY_BYTES", "0"),
    ("MAX_BODY_BYTES", "-1"),
    ("MAX_BODY_BYTES", "1023"),
    ("MAX_BODY_BYTES", str(64 * 1024 * 1024 + 1)),
    ("DB_TIMEOUT_SECONDS", "soon"),
    ("DB_TIMEOUT_SECONDS", "0"),
    ("DB_TIMEOUT_SECONDS", "-3"),
    ("DB_TIMEOUT_SECONDS", "nan"),
    ("DB_TIMEOUT_SECONDS", "inf"),
    ("DB_TIMEOUT_SECONDS", "301"),
    ("MAX_ATTEMPTS", "0"),
    ("MAX_ATTEMPTS", "many"),
    ("RETRY_BASE_SECONDS", "-1"),
    ("IDEMPOTENCY_TTL_HOURS", "23"),  # SPEC: keys live at least 24 hours
    ("IDEMPOTENCY_TTL_HOURS", "a day"),
    ("CATEGORY_SCHEMAS_DIR", "/no/such/directory"),
    ("DATABASE_URL", "mysql://u@h/db"),
    ("DATABASE_URL", "http://example.com"),
    ("DATABASE_URL", "workflow.db"),
    ("DATABASE_URL", "sqlite://workflow.db"),
    ("DATABASE_URL", "sqlite:///"),
    ("DATABASE_URL", "postgresql://h/db?pool_size=abc"),
    ("DATABASE_URL", "postgresql://h/db?pool_size=-1"),
    ("DATABASE_URL", "postgresql://h/db?pool_size="),
    ("DATABASE_URL", "postgresql://h/db?max_overflow=1001"),
    ("DATABASE_URL", "postgresql://h/db?max_overflow=2.5"),
])
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({name: value})
    message = str(info.value)
    assert name in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["pool_size", "max_overflow"])
def test_bad_pool_parameter_is_named(name):
    with pytest.raises(ConfigError, match=f"DATABASE_URL parameter {name}"):
        settings_from_mapping({"DATABASE_URL": f"postgresql://h/db?{name}=many"})


def test_bad_database_url_does_not_echo_password():
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"DATABASE_URL": "mysql://admin:hunter2-secret@h/db"})
    assert "hunter2-secret" not in str(info.value)


@pytest.mark.parametrize("key", ["short", "has space-in-it", "x" * 257, "tab\tinside-key"])
def test_bad_api_key_is_named_but_not_echoed(key):
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"API_KEY": f"good-key-123,{key}"})
    message = str(info.value)
    assert "API_KEY" in message
    assert key not in message and "good-key-123" not in message


def test_prod_without_api_key_is_refused():
    with pytest.raises(ConfigError, match="API_KEY is required when APP_ENV=prod"):
        settings_from_mapping({"APP_ENV": "prod"})
    with pytest.raises(ConfigError, match="API_KEY"):
        settings_from_mapping({"APP_ENV": "PROD", "API_KEY": " , "})


def test_prod_with_api_key_is_accepted():
    s = settings_from_mapping({"APP_ENV": "prod", "API_KEY": "prod-key-0001"})
    assert (s.app_env, s.api_keys) == ("prod", ("prod-key-0001",))


# ------------------------------------------------------------------ .env


def test_env_file_used_when_variable_absent(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n\nLOG_LEVEL=warning\nexport PROJECT_NAME=\"Quoted Name\"\nGIT_COMMIT='deadbeef'\n"
        "APP_VERSION = 9.9.9 \n",
        encoding="utf-8",
    )
    s = load_settings(environ={}, env_file=env_file)
    assert s.log_level == "WARNING"
    assert s.project_name == "Quoted Name"
    assert s.git_commit == "deadbeef"
    assert s.app_version == "9.9.9"
    assert s.app_env == "dev"


def test_environment_wins_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=DEBUG\nAPP_ENV=staging\nAPI_KEY=from-file-key-1\n", encoding="utf-8")
    s = load_settings(environ={"LOG_LEVEL": "ERROR", "API_KEY": "from-env-key-2"}, env_file=env_file)
    assert s.log_level == "ERROR"
    assert s.api_keys == ("from-env-key-2",)
    assert s.app_env == "staging"  # absent from the environment: taken from the file


def test_bad_value_in_env_file_is_reported(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MAX_BODY_BYTES=huge\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="MAX_BODY_BYTES"):
        load_settings(environ={}, env_file=env_file)
    # ...but a good value in the environment shadows the bad one in the file.
    assert load_settings(environ={"MAX_BODY_BYTES": "4096"}, env_file=env_file).max_body_bytes == 4096


def test_missing_env_file_is_fine(tmp_path):
    assert load_settings(environ={}, env_file=tmp_path / "absent.env") == Settings()
    assert read_env_file(tmp_path / "absent.env") == {}


def test_load_settings_reads_process_environment(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("GIT_COMMIT=from-file\nAPP_VERSION=1.0.0\n", encoding="utf-8")
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_COMMIT", "from-env")
    s = load_settings(env_file=env_file)
    assert (s.git_commit, s.app_version) == ("from-env", "1.0.0")


@pytest.mark.parametrize("line", ["JUST_A_NAME", "1BAD=x", "BAD NAME=x", "=value"])
def test_malformed_env_file_line(tmp_path, line):
    env_file = tmp_path / ".env"
    env_file.write_text(f"# first\nLOG_LEVEL=INFO\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_env_file(env_file)
    assert f"{env_file}:3:" in str(info.value)
    assert "NAME=value" in str(info.value)


# ------------------------------------------------------------------ the CLI


def run_cli(tmp_path, *args, **env_vars):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update({"PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **env_vars})
    return subprocess.run([sys.executable, "-m", "workflow", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def assert_one_line_error(result, variable: str, *secrets: str):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    for secret in secrets:
        assert secret not in result.stderr and secret not in result.stdout


def test_cli_bad_log_level(tmp_path):
    secret = "cli-secret-key-5150"
    result = run_cli(tmp_path, "migrate", "current", LOG_LEVEL="LOUD", API_KEY=secret)
    assert_one_line_error(result, "LOG_LEVEL", secret)
    assert not (tmp_path / "cli.db").exists(), "no database work before the configuration is valid"


@pytest.mark.parametrize("variable, value", [
    ("APP_ENV", "production"), ("MAX_BODY_BYTES", "big"), ("DB_TIMEOUT_SECONDS", "-1"),
    ("DATABASE_URL", "mysql://root:pw-7788-secret@h/db"), ("DATABASE_URL", "postgresql://h/db?pool_size=x"),
])
def test_cli_bad_values(tmp_path, variable, value):
    secret = "cli-secret-key-5150"
    result = run_cli(tmp_path, "migrate", "current", API_KEY=secret, **{variable: value})
    assert_one_line_error(result, variable, secret, "pw-7788-secret")


def test_cli_bad_api_key_not_echoed(tmp_path):
    result = run_cli(tmp_path, "migrate", "current", API_KEY="valid-key-0001,bad key with spaces")
    assert_one_line_error(result, "API_KEY", "valid-key-0001", "bad key with spaces")


def test_cli_prod_without_key(tmp_path):
    result = run_cli(tmp_path, "migrate", "current", APP_ENV="prod")
    assert_one_line_error(result, "API_KEY")


def test_cli_reads_env_file_and_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("LOG_LEVEL=LOUD\n", encoding="utf-8")
    result = run_cli(tmp_path, "migrate", "current")
    assert_one_line_error(result, "LOG_LEVEL")

    result = run_cli(tmp_path, "migrate", "current", LOG_LEVEL="INFO")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


# ------------------------------------------------------------------ postgres_conninfo


def query_of(conninfo: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(conninfo).query, keep_blank_values=True)


def test_conninfo_strips_pool_parameters_and_keeps_others():
    url = ("postgresql://user:pa%40ss@db.example:5433/app?pool_size=5&sslmode=require"
           "&max_overflow=7&options=-csearch_path%3Dmy_schema&application_name=wf")
    conninfo, pool_size, max_overflow = postgres_conninfo(url, 5.0)
    parts = urlsplit(conninfo)
    assert (parts.scheme, parts.netloc, parts.path) == ("postgresql", "user:pa%40ss@db.example:5433", "/app")
    params = query_of(conninfo)
    names = [name for name, _ in params]
    assert "pool_size" not in names and "max_overflow" not in names
    assert ("sslmode", "require") in params
    assert ("options", "-csearch_path=my_schema") in params
    assert ("application_name", "wf") in params
    assert ("connect_timeout", "5") in params
    assert (pool_size, max_overflow) == (5, 7)


def test_conninfo_defaults_and_explicit_timeout():
    conninfo, pool_size, max_overflow = postgres_conninfo("postgres://h/db?connect_timeout=11", 1.0)
    assert conninfo.startswith("postgresql://h/db?")
    assert query_of(conninfo) == [("connect_timeout", "11")]
    assert (pool_size, max_overflow) == (10, 20)


def test_conninfo_minimum_timeout_and_pool_size():
    conninfo, pool_size, max_overflow = postgres_conninfo("postgresql+psycopg://h/db?pool_size=0&max_overflow=0", 0.2)
    assert urlsplit(conninfo).scheme == "postgresql"
    assert query_of(conninfo) == [("connect_timeout", "2")]
    assert (pool_size, max_overflow) == (1, 0)


def test_conninfo_of_conftest_style_url_connects(pg_server_url):
    import psycopg
    from conftest import new_pg_schema

    url = new_pg_schema(pg_server_url) + "&pool_size=3&max_overflow=4"
    conninfo, pool_size, max_overflow = postgres_conninfo(url, 5.0)
    assert (pool_size, max_overflow) == (3, 4)
    schema = dict(query_of(url))["options"].split("=", 1)[1]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("SELECT current_schema()").fetchone()[0] == schema


def test_a_bad_workflow_processors_variable_stops_the_worker_with_one_line(tmp_path):
    """The worker falls back to WORKFLOW_PROCESSORS; a bad value is a configuration error, not a traceback."""
    result = run_cli(tmp_path, "worker", "--once", WORKFLOW_PROCESSORS="no_such_module_here:PROCESSORS")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("workflow: configuration error:") and "Traceback" not in result.stderr
