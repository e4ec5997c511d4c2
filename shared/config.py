"""Settings read from the environment (SPEC §3), validated once at start by pydantic: one model
declares every variable with its type and limits; gunicorn.conf.py reads `ServerSettings`.

A missing or malformed setting raises `ConfigError` whose message is one line naming the
variable; `create_app` lets it propagate so the service refuses to start.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    NonNegativeFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)


class ConfigError(Exception):
    """A setting is missing or malformed. The message is one line and names the variable."""


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
    return tokens


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        raise ValueError("DATABASE_URL must be a postgresql:// URL")
    return sqlalchemy_url(raw)


def _http_url(raw: str) -> str:
    if not raw.startswith(("https://", "http://")):
        raise ValueError("must be an http(s):// URL")
    return raw.rstrip("/")


def _secret_key(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("must be at least 32 characters (e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return raw


def _log_level(raw: str) -> str:
    if raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return raw.upper()


def sqlalchemy_url(url: str) -> str:
    """The URL with the driver named: SQLAlchemy 2.1 would otherwise pick psycopg 3."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else url

# A comma-separated variable is a list; a value already a list (from `create_app(config)`) stays one.
CommaList = Annotated[list[str], BeforeValidator(lambda raw: _list(raw) if isinstance(raw, str) else raw)]
ApiTokens = Annotated[dict[str, str], BeforeValidator(lambda raw: parse_api_tokens(raw) if isinstance(raw, str) else raw)]
HttpUrlText = Annotated[str, AfterValidator(_http_url)]
SecretKey = Annotated[str, AfterValidator(_secret_key)]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
LogLevel = Annotated[str, AfterValidator(_log_level)]


class ServerSettings(BaseModel):
    """Where and how a service is served: what gunicorn.conf.py reads. Field names are the
    variable names; types and limits are checked by pydantic, once, when the settings are read."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    HOST: str = "127.0.0.1"
    PORT: PositiveInt = 5001
    GUNICORN_WORKERS: PositiveInt = 2
    GUNICORN_THREADS: PositiveInt = 4
    GUNICORN_TIMEOUT: PositiveInt = 60
    GUNICORN_GRACEFUL_TIMEOUT: PositiveInt = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, default_port: int = 5001) -> Self:
        """The settings in `env` (the process environment by default): every variable named like a
        setting and not blank; the others are not ours."""
        env = os.environ if env is None else env
        values: dict[str, object] = {"PORT": default_port}
        values.update({name: env[name] for name in cls.model_fields if (env.get(name) or "").strip()})
        for required, hint in REQUIRED.items():
            if required in cls.model_fields and required not in values:
                raise ConfigError(f"{required} is required: {hint}")
        return _validated(cls, values)


class Settings(ServerSettings):
    """Everything a service reads from its environment."""

    DATABASE_URL: DatabaseUrl
    API_TOKENS: ApiTokens = {}
    AUTH_CLIENTS_FILE: str | None = None
    OIDC_ISSUER: HttpUrlText | None = None
    OIDC_AUDIENCE: str | None = None
    OIDC_CLIENT_ID: str | None = None
    OIDC_CLIENT_SECRET: str | None = None
    DASHBOARD_SECRET_KEY: SecretKey | None = None
    IMPORTS_ENABLED: bool = True
    SMTP_HOST: str | None = None
    SMTP_PORT: PositiveInt = 25
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: str | None = None
    SMTP_STARTTLS: bool = False
    SMTP_TIMEOUT: NonNegativeFloat = 10.0
    ALERT_EMAIL_TO: CommaList = ["info@curavani.com"]
    ALERT_EMAIL_FROM: str = "imports@localhost"
    ALERT_OUTBOX_DIR: str = "./var/outbox"
    PATIENT_IMPORT_SOURCE: str | None = None
    PATIENT_IMPORT_INTERVAL_SECONDS: NonNegativeFloat = 3600.0
    PATIENT_IMPORT_BACKUP_DIR: str | None = None
    PATIENT_IMPORT_MAX_ATTEMPTS: PositiveInt = 5
    THERAPIST_IMPORT_DIR: str | None = None
    THERAPIST_IMPORT_RESCAN_SECONDS: NonNegativeFloat = 300.0
    THERAPIST_IMPORT_SETTLE_SECONDS: NonNegativeFloat = 2.0
    THERAPIST_IMPORT_POLLING: bool = False
    IMPORT_MAX_FILE_BYTES: PositiveInt = 104_857_600
    BATCH_MAX_ITEMS: PositiveInt = 1000
    IDEMPOTENCY_TTL_HOURS: NonNegativeFloat = 24.0
    MAX_REQUEST_BYTES: PositiveInt = 10_485_760
    CORS_ORIGINS: CommaList = []
    LOG_LEVEL: LogLevel = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    EVENTS_KAFKA_BOOTSTRAP: str | None = None
    EVENTS_TOPIC_PREFIX: str = "curavani."
    EVENTS_RETENTION_HOURS: NonNegativeFloat = 168.0
    PATIENT_IMPORT_BACKUP_RETENTION_DAYS: PositiveInt | None = None
    ACCESS_LOG_RETENTION_DAYS: PositiveInt = 730

    @model_validator(mode="after")
    def _bucket_needs_a_backup_folder(self) -> Settings:
        if self.PATIENT_IMPORT_SOURCE and not self.PATIENT_IMPORT_BACKUP_DIR:
            raise ValueError("PATIENT_IMPORT_BACKUP_DIR is required when PATIENT_IMPORT_SOURCE is set")
        return self

    @model_validator(mode="after")
    def _some_credential(self) -> Settings:
        if not (self.API_TOKENS or self.AUTH_CLIENTS_FILE or self.OIDC_ISSUER):
            raise ValueError("a credential setting is required: AUTH_CLIENTS_FILE (service clients), "
                             "OIDC_ISSUER with OIDC_AUDIENCE (people) or API_TOKENS (development)")
        if self.OIDC_ISSUER and not self.OIDC_AUDIENCE:
            raise ValueError("OIDC_AUDIENCE is required when OIDC_ISSUER is set")
        if self.OIDC_CLIENT_ID and not self.OIDC_ISSUER:
            raise ValueError("OIDC_CLIENT_ID needs OIDC_ISSUER (the provider the dashboard signs in with)")
        return self

    def with_overrides(self, overrides: Mapping[str, object]) -> Settings:
        """A copy with some values replaced, checked like the rest: how tests and
        `create_app(config=...)` adjust settings."""
        return _validated(Settings, {**self.model_dump(), **overrides})


SettingsModel = TypeVar("SettingsModel", bound=ServerSettings)
REQUIRED = {"DATABASE_URL": "a PostgreSQL URL such as postgresql://user@host/db"}


def _validated(model: type[SettingsModel], values: Mapping[str, object]) -> SettingsModel:
    try:
        return model.model_validate(values)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]  # never the value: it may be a token
        name = ".".join(str(part) for part in first["loc"]) or "settings"
        detail = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            detail = f"unknown setting {name}"
        raise ConfigError(detail if detail.startswith(name) or name == "settings" else f"{name}: {detail}") from None


def load_settings(config: Mapping[str, object] | None, *, default_port: int) -> Settings:
    """Settings for `create_app(config)`: the environment, then `config` on top.

    `config` may hold the required values itself, so tests need not touch `os.environ`; a value
    of `config` that is text replaces the variable before the settings are checked together.
    """
    env = dict(os.environ)
    overrides = dict(config or {})
    for name, value in list(overrides.items()):  # text is read as the environment's would be
        if isinstance(value, str) and name in Settings.model_fields:
            env[name] = value
            del overrides[name]
    settings = Settings.from_env(env, default_port=default_port)
    return settings.with_overrides(overrides) if overrides else settings
