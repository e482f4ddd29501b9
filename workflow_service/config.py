"""Settings from the environment, then `.env`, validated once at start-up."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
APP_ENVS = ("dev", "staging", "prod")
_KEY_RE = re.compile(r"^[\x21-\x7e]{8,256}$")
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    database_url: str = field(default="sqlite:///./workflow.db", repr=False)  # may hold a password
    log_level: str = "INFO"
    app_env: str = "dev"
    project_name: str = "Workflow Service"
    app_version: str = "0.1.0"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    git_commit: str = "unknown"
    max_body_bytes: int = 1024 * 1024
    db_timeout_seconds: float = 5.0
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    idempotency_ttl_hours: float = 24.0
    web_concurrency: int = 2
    cors_origins: tuple[str, ...] = ()
    category_schemas_dir: str = str(Path(__file__).resolve().parent.parent / "schemas" / "categories")

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`, from the database URL."""
        return "sqlite" if self.database_url.startswith("sqlite:") else "postgresql"


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a `.env` file: `NAME=value` lines, `#` comments, optional quotes."""
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def load_settings(environ: dict[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Build Settings from the environment, falling back to `env_file`; raise ConfigError."""
    merged = read_env_file(env_file) if env_file else {}
    merged.update(os.environ if environ is None else environ)
    return settings_from_mapping(merged)


def settings_from_mapping(env: dict[str, str]) -> Settings:
    """Validate a mapping of variable names to strings into Settings."""
    defaults = Settings()

    def get(name: str, default: str) -> str:
        value = env.get(name)
        return default if value is None or value.strip() == "" else value.strip()

    database_url = get("DATABASE_URL", defaults.database_url)
    check_database_url(database_url)

    log_level = get("LOG_LEVEL", defaults.log_level).upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")

    app_env = get("APP_ENV", defaults.app_env).lower()
    if app_env not in APP_ENVS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(APP_ENVS)}, not {app_env!r}")

    api_keys = tuple(k.strip() for k in get("API_KEY", "").split(",") if k.strip())
    for key in api_keys:
        if not _KEY_RE.match(key):
            # Never echo the key itself.
            raise ConfigError("API_KEY entries must be 8-256 printable characters without spaces")
    if app_env == "prod" and not api_keys:
        raise ConfigError("API_KEY is required when APP_ENV=prod")

    max_body = _number(env, "MAX_BODY_BYTES", defaults.max_body_bytes, int, 1024, 64 * 1024 * 1024)
    timeout = _number(env, "DB_TIMEOUT_SECONDS", defaults.db_timeout_seconds, float, 0.1, 300)
    max_attempts = _number(env, "MAX_ATTEMPTS", defaults.max_attempts, int, 1, 100)
    retry_base = _number(env, "RETRY_BASE_SECONDS", defaults.retry_base_seconds, float, 0, 3600)
    # SPEC: idempotency keys live at least 24 hours.
    ttl = _number(env, "IDEMPOTENCY_TTL_HOURS", defaults.idempotency_ttl_hours, float, 24, 24 * 365)

    web_concurrency = _number(env, "WEB_CONCURRENCY", defaults.web_concurrency, int, 1, 64)
    cors_origins = tuple(o.strip() for o in get("CORS_ORIGINS", "").split(",") if o.strip())
    for origin in cors_origins:
        if origin != "*" and not _ORIGIN_RE.match(origin):
            raise ConfigError(f"CORS_ORIGINS entries must be * or like https://app.example.com, not {origin!r}")
    schemas_dir = get("CATEGORY_SCHEMAS_DIR", defaults.category_schemas_dir)
    if not Path(schemas_dir).is_dir():
        raise ConfigError(f"CATEGORY_SCHEMAS_DIR {schemas_dir!r} is not a directory")

    return Settings(
        database_url=database_url,
        category_schemas_dir=schemas_dir,
        log_level=log_level,
        app_env=app_env,
        project_name=get("PROJECT_NAME", defaults.project_name),
        app_version=get("APP_VERSION", defaults.app_version),
        api_keys=api_keys,
        git_commit=get("GIT_COMMIT", defaults.git_commit),
        max_body_bytes=max_body,
        db_timeout_seconds=timeout,
        max_attempts=max_attempts,
        retry_base_seconds=retry_base,
        idempotency_ttl_hours=ttl,
        web_concurrency=web_concurrency,
        cors_origins=cors_origins,
    )


def _number(env, name, default, kind, low, high):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {raw!r}")
    return value


def check_database_url(url: str) -> None:
    """Raise ConfigError unless `url` is a SQLite or PostgreSQL URL we can use."""
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ConfigError("DATABASE_URL for SQLite must look like sqlite:///./workflow.db")
        return
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError("DATABASE_URL must start with sqlite:/// or postgresql://")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("pool_size", "max_overflow") and not (value.isdigit() and int(value) <= 1000):
            raise ConfigError(f"DATABASE_URL parameter {name} must be a whole number up to 1000")
