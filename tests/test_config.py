"""Settings from the environment (SPEC §3): a missing or malformed setting stops the service with
one clear line naming the variable."""
from __future__ import annotations

import pytest
from conftest import API_TOKENS, TOKEN

from patient_service import create_app as create_patient_app
from shared.config import ConfigError, Settings
from therapist_service import create_app as create_therapist_app

REQUIRED = {"DATABASE_URL": "postgresql://curavani@localhost/curavani", "API_TOKENS": API_TOKENS}


def config_error(env) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_required_settings_and_defaults_are_read_from_the_environment():
    settings = Settings.from_env(REQUIRED, default_port=5002)

    assert settings.DATABASE_URL == "postgresql+psycopg2://curavani@localhost/curavani"
    assert settings.API_TOKENS == {TOKEN: "tests", "other-token-0123456789abcdef": "other"}
    assert settings.PORT == 5002
    assert settings.IMPORTS_ENABLED is True
    assert settings.BATCH_MAX_ITEMS == 1000
    assert settings.MAX_REQUEST_BYTES == 10_485_760
    assert settings.ALERT_EMAIL_TO == ["info@curavani.com"]


def test_values_are_parsed_by_type():
    settings = Settings.from_env({**REQUIRED, "IMPORTS_ENABLED": "false", "BATCH_MAX_ITEMS": " 50 ",
                                  "THERAPIST_IMPORT_SETTLE_SECONDS": "0.5", "CORS_ORIGINS": "https://a.de, https://b.de",
                                  "LOG_LEVEL": "debug", "PORT": "8000"})

    assert settings.IMPORTS_ENABLED is False
    assert settings.BATCH_MAX_ITEMS == 50
    assert settings.THERAPIST_IMPORT_SETTLE_SECONDS == 0.5
    assert settings.CORS_ORIGINS == ["https://a.de", "https://b.de"]
    assert settings.LOG_LEVEL == "DEBUG"
    assert settings.PORT == 8000


@pytest.mark.parametrize("missing", ["DATABASE_URL", "API_TOKENS"])
@pytest.mark.parametrize("absent_as", [None, "", "   "])
def test_missing_required_setting_raises_one_line_naming_it(missing, absent_as):
    env = dict(REQUIRED)
    if absent_as is None:
        del env[missing]
    else:
        env[missing] = absent_as

    assert missing in config_error(env)


@pytest.mark.parametrize("name, raw", [
    ("BATCH_MAX_ITEMS", "abc"),
    ("BATCH_MAX_ITEMS", "0"),
    ("MAX_REQUEST_BYTES", "10MB"),
    ("PORT", "http"),
    ("PATIENT_IMPORT_MAX_ATTEMPTS", "-1"),
    ("PATIENT_IMPORT_INTERVAL_SECONDS", "hourly"),
    ("THERAPIST_IMPORT_RESCAN_SECONDS", "-5"),
    ("IMPORTS_ENABLED", "maybe"),
    ("LOG_FORMAT", "xml"),
    ("LOG_LEVEL", "loud"),
])
def test_malformed_setting_raises_one_line_naming_the_variable(name, raw):
    message = config_error({**REQUIRED, name: raw})

    assert name in message


def test_database_url_must_be_postgresql():
    assert "DATABASE_URL" in config_error({**REQUIRED, "DATABASE_URL": "sqlite:///curavani.db"})


@pytest.mark.parametrize("raw", ["just-a-token-without-name", "tests:", "tests:short", ":" + TOKEN])
def test_malformed_api_tokens_are_named_without_echoing_the_token(raw):
    message = config_error({**REQUIRED, "API_TOKENS": raw})

    assert "API_TOKENS" in message
    secret = raw.partition(":")[2] or raw
    assert secret not in message


def test_bucket_source_without_backup_folder_names_the_missing_variable():
    message = config_error({**REQUIRED, "PATIENT_IMPORT_SOURCE": "gs://registrations"})

    assert "PATIENT_IMPORT_BACKUP_DIR" in message


@pytest.mark.parametrize("create_app", [create_patient_app, create_therapist_app])
def test_create_app_with_a_bad_setting_raises_config_error(create_app, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("API_TOKENS", API_TOKENS)

    with pytest.raises(ConfigError, match="DATABASE_URL"):
        create_app()


@pytest.mark.parametrize("create_app", [create_patient_app, create_therapist_app])
def test_create_app_with_a_malformed_environment_variable_raises_config_error(create_app, monkeypatch):
    monkeypatch.setenv("BATCH_MAX_ITEMS", "abc")

    with pytest.raises(ConfigError, match="BATCH_MAX_ITEMS"):
        create_app({**REQUIRED, "IMPORTS_ENABLED": False})


def test_create_app_with_an_unknown_setting_raises_config_error():
    with pytest.raises(ConfigError, match="MAX_REQUEST_SIZE"):
        create_patient_app({**REQUIRED, "IMPORTS_ENABLED": False, "MAX_REQUEST_SIZE": 10})
