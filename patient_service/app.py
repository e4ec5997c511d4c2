"""The patient service's app factory."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from shared import batch
from shared.app_factory import ServiceDefinition, build_app
from shared.config import load_settings
from shared.imports import service as imports

SERVICE_NAME = "patient_service"
DEFAULT_PORT = 5001


def start_importer(app: Flask) -> None:
    """The one place the bucket importer is started: the poll schedule and the runner."""
    app.extensions["imports"].start()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    from patient_service import api, importer
    from shared.imports import api as imports_api

    settings = load_settings(config, default_port=DEFAULT_PORT)
    service = ServiceDefinition(
        name=SERVICE_NAME,
        title="Patient service",
        description="Patients, consents and registrations; imports registration files from a bucket.",
        default_port=DEFAULT_PORT,
        blueprints=[api.blp, imports_api.blp, batch.batches_blp],
        start_importer=start_importer,
        no_store_prefixes=("/api/",),
        extra_setup=[lambda app: app.extensions.update(batch=api.BATCH),
                     lambda app: imports.install(app, importer.spec(settings))],
    )
    return build_app(service, settings)
