"""Settings read from the environment (SPEC §3), validated once at start.

A missing or malformed setting raises `ConfigError` whose message is one line naming the
variable; `create_app` lets it propagate so the service refuses to start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping


class ConfigError(Exception):
    """A setting is missing or malformed. The message is one line and names the variable."""


def _truthy(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _integer(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


def _list(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_api_tokens(raw: str) -> dict[str, str]:
    """`name:token,name2:token2` → {token: name}. Token values are never echoed in errors."""
    tokens: dict[str, str] = {}
    for position, pair in enumerate(_list(raw), start=1):
        name, sep, token = pair.partition(":")
        if not sep or not name.strip() or not token.strip():
            raise ConfigError(f"API_TOKENS entry {position} must look like name:token")
        if len(token.strip()) < 16:
            raise ConfigError(f"API_TOKENS entry {position} ({name.strip()}): token must be at least 16 characters")
        tokens[token.strip()] = name.strip()
    if not tokens:
        raise ConfigError("API_TOKENS is required: set name:token pairs, comma-separated")
    return tokens


def sqlalchemy_url(url: str) -> str:
    """The URL with the driver named: SQLAlchemy 2.1 would otherwise pick psycopg 3."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else url


@dataclass(frozen=True)
class Settings:
    """Everything a service reads from its environment. Field names are the variable names."""

    DATABASE_URL: str
    API_TOKENS: dict[str, str]
    HOST: str = "127.0.0.1"
    PORT: int = 5001
    IMPORTS_ENABLED: bool = True
    SMTP_HOST: str | None = None
    SMTP_PORT: int = 25
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: str | None = None
    SMTP_STARTTLS: bool = False
    SMTP_TIMEOUT: float = 10.0
    ALERT_EMAIL_TO: list[str] = field(default_factory=lambda: ["info@curavani.com"])
    ALERT_EMAIL_FROM: str = "imports@localhost"
    ALERT_OUTBOX_DIR: str = "./var/outbox"
    PATIENT_IMPORT_SOURCE: str | None = None
    PATIENT_IMPORT_INTERVAL_SECONDS: float = 3600.0
    PATIENT_IMPORT_BACKUP_DIR: str | None = None
    PATIENT_IMPORT_MAX_ATTEMPTS: int = 5
    THERAPIST_IMPORT_DIR: str | None = None
    THERAPIST_IMPORT_RESCAN_SECONDS: float = 300.0
    THERAPIST_IMPORT_SETTLE_SECONDS: float = 2.0
    THERAPIST_IMPORT_POLLING: bool = False
    IMPORT_MAX_FILE_BYTES: int = 104_857_600
    BATCH_MAX_ITEMS: int = 1000
    IDEMPOTENCY_TTL_HOURS: float = 24.0
    MAX_REQUEST_BYTES: int = 10_485_760
    CORS_ORIGINS: list[str] = field(default_factory=list)
    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: str = "text"
    EVENTS_KAFKA_BOOTSTRAP: str | None = None
    EVENTS_TOPIC_PREFIX: str = "curavani."
    EVENTS_RETENTION_HOURS: float = 168.0
    PATIENT_IMPORT_BACKUP_RETENTION_DAYS: int | None = None
    ACCESS_LOG_RETENTION_DAYS: int = 730

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, default_port: int = 5001) -> "Settings":
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value is not None and value.strip() != "" else None

        database_url = get("DATABASE_URL")
        if not database_url:
            raise ConfigError("DATABASE_URL is required: a PostgreSQL URL such as postgresql://user@host/db")
        if not database_url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
        raw_tokens = get("API_TOKENS")
        if not raw_tokens:
            raise ConfigError("API_TOKENS is required: set name:token pairs, comma-separated")

        values: dict[str, Any] = {
            "DATABASE_URL": sqlalchemy_url(database_url),
            "API_TOKENS": parse_api_tokens(raw_tokens),
            "PORT": default_port,
        }
        for spec in fields(cls):
            name = spec.name
            raw = get(name)
            if name in ("DATABASE_URL", "API_TOKENS") or raw is None:
                continue
            kind = spec.type  # a string: this module uses postponed annotations
            if kind == "bool":
                values[name] = _truthy(name, raw)
            elif kind in ("int", "int | None"):
                values[name] = _integer(name, raw, minimum=1)
            elif kind == "float":
                values[name] = _number(name, raw)
            elif kind.startswith("list"):
                values[name] = _list(raw)
            else:
                values[name] = raw.strip()

        if values.get("LOG_FORMAT", "text") not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT must be text or json, got {values['LOG_FORMAT']!r}")
        if values.get("LOG_LEVEL", "INFO").upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                              f"got {values['LOG_LEVEL']!r}")
        values["LOG_LEVEL"] = values.get("LOG_LEVEL", "INFO").upper()
        if values.get("PATIENT_IMPORT_SOURCE") and not values.get("PATIENT_IMPORT_BACKUP_DIR"):
            raise ConfigError("PATIENT_IMPORT_BACKUP_DIR is required when PATIENT_IMPORT_SOURCE is set")
        return cls(**values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with some values replaced: how tests and `create_app(config=...)` adjust settings."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting {sorted(unknown)[0]}")
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(overrides)
        if isinstance(data["API_TOKENS"], str):
            data["API_TOKENS"] = parse_api_tokens(data["API_TOKENS"])
        return Settings(**data)


def load_settings(config: Mapping[str, Any] | None, *, default_port: int) -> Settings:
    """Settings for `create_app(config)`: the environment, then `config` on top.

    `config` may hold the required values itself, so tests need not touch `os.environ`.
    """
    env = dict(os.environ)
    overrides = dict(config or {})
    for required in ("DATABASE_URL", "API_TOKENS"):
        if required in overrides and isinstance(overrides[required], str):
            env[required] = overrides.pop(required)
    settings = Settings.from_env(env, default_port=default_port)
    return settings.with_overrides(overrides) if overrides else settings
