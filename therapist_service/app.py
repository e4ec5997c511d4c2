"""The therapist service's app factory."""
from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from shared.app_factory import ServiceDefinition, build_app
from shared.config import load_settings

SERVICE_NAME = "therapist_service"
DEFAULT_PORT = 5002


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    from therapist_service import api, importer
    from therapist_service.appointments import api as appointments_api
    from therapist_service.participants import api as participants_api

    settings = load_settings(config, default_port=DEFAULT_PORT)
    service = ServiceDefinition(
        name=SERVICE_NAME,
        title="Therapist service",
        description="Therapists and their practice data; imports the weekly scrape from a folder.",
        blueprints=[api.blp, participants_api.blp, appointments_api.blp],
        no_store_prefixes=(participants_api.blp.url_prefix,),  # participants are personal data
        importer=importer.spec(settings),
        batch=api.BATCH,
    )
    return build_app(service, settings)
