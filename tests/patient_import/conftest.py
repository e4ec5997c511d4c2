"""Fixtures for the patient bucket importer tests: a real GCS emulator and a real SMTP server on
loopback, and patient service apps whose importer reads that bucket with the real
google-cloud-storage client.

This folder is a package (`__init__.py`) so this conftest is imported as `patient_import.conftest`
and does not replace the top-level `conftest` module that the helpers import `AUTH` from.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import SmtpServer, free_port

from .support import BUCKET

# Requests to a stopped emulator are retried by the client up to this many seconds (60 in
# production); a short deadline keeps the outage tests quick without changing what they show.
TEST_RETRY_DEADLINE_SECONDS = 1.0


class Emulator:
    """gcp-storage-emulator on loopback, with the bucket `inbox`; can be stopped and started again
    on the same port (in memory: its objects are lost when it stops)."""

    def __init__(self):
        self.host = "127.0.0.1"
        self.port = free_port()
        self.url = f"http://{self.host}:{self.port}"
        self._server = None

    def start(self) -> None:
        from gcp_storage_emulator.server import create_server

        self._server = create_server(self.host, self.port, in_memory=True, default_bucket=BUCKET)
        self._server.start()

    @staticmethod
    def enforce_generation_match(monkeypatch) -> None:
        """Give the emulator's object delete the precondition check GCS makes: `ifGenerationMatch`
        other than the object's generation is 412 (the emulator deletes whatever generation is
        there). The importer relies on GCS for it, so the tests' bucket must behave like GCS."""
        from http import HTTPStatus

        from gcp_storage_emulator import server
        from gcp_storage_emulator.exceptions import NotFound
        from gcp_storage_emulator.handlers import objects

        def delete(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            if wanted:
                try:
                    current = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
                except NotFound:
                    response.status = HTTPStatus.NOT_FOUND
                    return
                if str(current["generation"]) != wanted[0]:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    return
            objects.delete(request, response, storage, *args, **kwargs)

        for _, handlers in server.HANDLERS:
            if handlers.get(server.DELETE) is objects.delete:
                monkeypatch.setitem(handlers, server.DELETE, delete)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None


@pytest.fixture
def emulator(monkeypatch):
    from shared.imports.sources import bucket

    server = Emulator()
    Emulator.enforce_generation_match(monkeypatch)
    server.start()
    # Read by the google client when `create_app` builds the service's bucket: set it first.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setattr(bucket, "RETRY_DEADLINE_SECONDS", TEST_RETRY_DEADLINE_SECONDS)
    yield server
    server.stop()


@pytest.fixture
def gcs(emulator):
    """The test's own google-cloud-storage client on the emulator's bucket (the uploader's side)."""
    from .support import Gcs

    return Gcs()


@pytest.fixture
def smtp_server():
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def backup_dir(tmp_path) -> Path:
    return tmp_path / "backup"


@pytest.fixture
def importer_settings(emulator, smtp_server, backup_dir, tmp_path) -> dict[str, Any]:
    """Settings for an app whose passes the test drives itself (`IMPORTS_ENABLED` false)."""
    return {
        "IMPORTS_ENABLED": False,
        "PATIENT_IMPORT_SOURCE": f"gs://{BUCKET}",
        "PATIENT_IMPORT_BACKUP_DIR": str(backup_dir),
        "PATIENT_IMPORT_INTERVAL_SECONDS": 60.0,
        "PATIENT_IMPORT_MAX_ATTEMPTS": 3,
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": smtp_server.port,
        "SMTP_TIMEOUT": 2.0,
        "ALERT_OUTBOX_DIR": str(tmp_path / "outbox"),
    }


@pytest.fixture
def make_importer(importer_settings, make_app) -> Callable[..., Any]:
    """`make_importer(**overrides)` → a patient app reading the emulator's bucket.

    `make_app` comes after the servers, so its teardown stops running importers before the
    emulator and the SMTP server go away."""

    def factory(**overrides: Any):
        return make_app("patient", **{**importer_settings, **overrides})

    return factory


@pytest.fixture
def app(make_importer):
    return make_importer()


@pytest.fixture
def client(app):
    return app.test_client()
