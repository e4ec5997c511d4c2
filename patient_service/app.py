"""The patient service's app factory."""
from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from shared.app_factory import ServiceDefinition, build_app
from shared.config import load_settings

SERVICE_NAME = "patient_service"
DEFAULT_PORT = 5001


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    from patient_service import api, importer, privacy

    settings = load_settings(config, default_port=DEFAULT_PORT)
    service = ServiceDefinition(
        name=SERVICE_NAME,
        title="Patient service",
        description="Patients, consents and registrations; imports registration files from a bucket.",
        blueprints=[api.blp],
        # SPEC §10: backup copies erasures still owe, after every pass; retention, daily.
        importer=importer.spec(settings, after_pass=privacy.Housekeeping.of(settings)),
        batch=api.BATCH,
        no_store_prefixes=("/api/",),  # patient data is never cached
    )
    return build_app(service, settings)
