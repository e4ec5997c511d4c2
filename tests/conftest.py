"""Test fixtures: one real PostgreSQL for the session, built by running the migrations.

The server is an embedded one (under `var/test-postgres`) unless `TEST_DATABASE_URL` names one;
either way the suite works in a database of its own, created here and dropped at the end.
Every test starts from empty tables.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shared.background import stop_background
from shared.devdb import drop_database, ensure_database, start_embedded

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"
TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"
API_TOKENS = f"tests:{TOKEN},other:{OTHER_TOKEN}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DASHBOARD_SECRET_KEY = "dashboard-secret-key-for-tests-0123456789abcdef"
SCHEMAS = ("patient_service", "therapist_service")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def database_url() -> str:
    base = os.environ.get("TEST_DATABASE_URL")
    server = None
    if not base:
        server = start_embedded(ROOT / "var" / "test-postgres")
        base = server.get_uri()
    name = f"curavani_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = ensure_database(base, name)
    yield url
    drop_database(base, name)


@pytest.fixture(scope="session")
def base_config(database_url) -> dict[str, Any]:
    return {"DATABASE_URL": database_url, "API_TOKENS": API_TOKENS, "IMPORTS_ENABLED": False,
            "DASHBOARD_SECRET_KEY": DASHBOARD_SECRET_KEY}


def upgrade_all(config: dict[str, Any]) -> None:
    from flask_migrate import upgrade

    from patient_service import create_app as patient_app
    from therapist_service import create_app as therapist_app

    for factory in (patient_app, therapist_app):
        app = factory(config)
        with app.app_context():
            upgrade()


@pytest.fixture(scope="session")
def migrated(base_config) -> dict[str, Any]:
    upgrade_all(base_config)
    return base_config


@pytest.fixture(scope="session")
def admin_engine(database_url):
    from shared.config import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _empty_tables(request, admin_engine):
    yield
    if "migrated" not in request.fixturenames:
        return
    with admin_engine.begin() as conn:
        tables = conn.execute(text(
            "SELECT schemaname || '.' || tablename FROM pg_tables "
            "WHERE schemaname = ANY(:schemas) AND tablename <> 'alembic_version'"),
            {"schemas": list(SCHEMAS)}).scalars().all()
        if tables:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def make_app(migrated) -> Callable[..., Any]:
    """`make_app("patient", **overrides)` → a configured app of that service."""
    from patient_service import create_app as patient_app
    from therapist_service import create_app as therapist_app

    apps = []

    def factory(service: str, **overrides: Any):
        create = {"patient": patient_app, "therapist": therapist_app}[service]
        app = create({**migrated, **overrides})
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        stop_background(app)
        with app.app_context():
            from shared.extensions import db

            db.engine.dispose()


@pytest.fixture
def patient_app(make_app):
    return make_app("patient")


@pytest.fixture
def therapist_app(make_app):
    return make_app("therapist")


@pytest.fixture
def patient_client(patient_app):
    return patient_app.test_client()


@pytest.fixture
def therapist_client(therapist_app):
    return therapist_app.test_client()


@pytest.fixture
def browser():
    """Debian's chromium through Playwright (which never downloads a browser here)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's chromium. "
                    "`make test` installs it when run as root; or run `apt-get install chromium`.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `make install` (it is pinned in pyproject.toml)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
