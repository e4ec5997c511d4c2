"""Fixtures for the data protection tests: the bucket importer's (a real GCS emulator, a real SMTP
server, a real backup folder) reused from tests/patient_import."""
from __future__ import annotations

from patient_import.conftest import app, backup_dir, client, emulator, gcs, importer_settings, make_importer, smtp_server  # noqa: F401
