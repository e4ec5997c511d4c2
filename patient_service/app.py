"""The patient service's app factory."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from shared.app_factory import ServiceDefinition, build_app
from shared.config import load_settings

SERVICE_NAME = "patient_service"
DEFAULT_PORT = 5001


def start_importer(app: Flask) -> None:
    """The one place the bucket importer is started (filled in by the importer issue)."""


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    from patient_service import api, models  # noqa: F401  (models: registers the tables)

    settings = load_settings(config, default_port=DEFAULT_PORT)
    service = ServiceDefinition(
        name=SERVICE_NAME,
        title="Patient service",
        description="Patients, consents and registrations; imports registration files from a bucket.",
        default_port=DEFAULT_PORT,
        blueprints=[api.blp],
        start_importer=start_importer,
        no_store_prefixes=("/api/",),
    )
    return build_app(service, settings)
