"""Fixtures for the importer tests: a real folder, a real SMTP server on loopback, and therapist
service apps whose background importer runs for real (watchdog, APScheduler, advisory lock).

This folder is a package (`__init__.py`) so this conftest is imported as `importers.conftest`
and does not replace the top-level `conftest` module that test files import `AUTH` from.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import SmtpServer

from .support import wait_until

SETTLE_SECONDS = 0.3
HEARTBEAT_SECONDS = 0.2


@pytest.fixture
def smtp_server():
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def inbox(tmp_path) -> Path:
    """The folder the scraper writes to."""
    folder = tmp_path / "therapist-inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def importer_settings(inbox, smtp_server, tmp_path) -> dict[str, Any]:
    return {
        "IMPORTS_ENABLED": True,
        "THERAPIST_IMPORT_DIR": str(inbox),
        "THERAPIST_IMPORT_SETTLE_SECONDS": SETTLE_SECONDS,
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": smtp_server.port,
        "SMTP_TIMEOUT": 2.0,
        "ALERT_OUTBOX_DIR": str(tmp_path / "outbox"),
    }


@pytest.fixture
def start_importer(importer_settings, make_app, monkeypatch) -> Callable[..., Any]:
    """`start_importer(**overrides)` → a therapist app whose importer runs; `wait_for_lead=False`
    returns at once instead of waiting until this app holds the importer lock. Apps are set up
    after the SMTP server, so at teardown their importers stop before it does.

    The worker's clock ticks every HEARTBEAT_SECONDS instead of every second: each tick does the
    same work (keep or take the lock, hand settled files to the worker), the tests just wait less.
    """
    from shared.imports import worker

    monkeypatch.setattr(worker, "HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)

    def start(*, wait_for_lead: bool = True, **overrides: Any):
        app = make_app("therapist", **{**importer_settings, **overrides})
        if wait_for_lead:
            importer = app.extensions["imports"]
            wait_until(lambda: importer.worker.is_leader and importer.source.observer_alive(),
                       what="the importer to take the lock and watch the folder")
        return app

    return start


@pytest.fixture
def importer_app(start_importer):
    return start_importer()


@pytest.fixture
def client(importer_app):
    return importer_app.test_client()
