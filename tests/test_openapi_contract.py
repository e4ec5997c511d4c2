"""Each service's published OpenAPI document against the service itself: a bounded schemathesis run
over every operation, with a valid token, checking for server errors and for responses (status,
content type, headers, body) that the document does not describe."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from conftest import API_TOKENS, AUTH
from patient_service import create_app as create_patient_app
from therapist_service import create_app as create_therapist_app

# Unknown query parameters are ignored on purpose (pagination and filters are parsed from the
# same query string by separate schemas); the token is ours to send, not schemathesis' to vary.
CONFIG = SchemathesisConfig.from_dict(
    {"generation": {"allow-extra-parameters": False, "with-security-parameters": False}})
# No server errors, and every response as documented. Not `negative_data_rejection` or
# `positive_data_acceptance`: the services validate more and otherwise than JSON Schema can say
# (names trimmed before their length is checked, plausible birth dates, real e-mail addresses,
# time ranges, duplicates), so those two would report the contract, not a fault.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Bounded and repeatable: the same examples on every run, well under 90 seconds for the file.
BOUNDED = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))
PATIENTS = [
    {"vorname": "Max", "nachname": "Mustermann", "geburtsdatum": "2000-01-01", "email": "max@example.de"},
    {"vorname": "Erika", "nachname": "Musterfrau", "geburtsdatum": "1985-03-12", "email": "erika@example.de",
     "plz": "52062", "raeumliche_verfuegbarkeit": {"max_km": 10}},
]
THERAPISTS = [
    {"external_id": "praxis1", "last_modified": "2025-07-02T03:13:24",
     "basic_info": {"first_name": "Thomas", "last_name": "Zeevaert"}, "location": {"postcode": "52062"}},
    {"basic_info": {"first_name": "Anna", "last_name": "Becker"}},
]


def published_schema(create_app):
    """The OpenAPI document as the service serves it. Building the app and serving the document
    touch no database, so placeholder settings do; the calls go to a real app (`app=`) below.

    (`schemathesis.pytest.from_fixture` would be the lazy way, but it does not run under pytest 9.)
    """
    app = create_app({"DATABASE_URL": "postgresql://localhost/unused", "API_TOKENS": API_TOKENS,
                      "IMPORTS_ENABLED": False})
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=CONFIG)


def seed(app, path: str, bodies: list[dict]):
    """A few records, so that generated ids also reach existing (and, later, deleted) ones."""
    client = app.test_client()
    for body in bodies:
        assert client.post(path, json=body, headers=AUTH).status_code == 201
    return app


@pytest.fixture
def seeded_patient_app(make_app):
    return seed(make_app("patient"), "/api/patients", PATIENTS)


@pytest.fixture
def seeded_therapist_app(make_app):
    return seed(make_app("therapist"), "/api/therapists", THERAPISTS)


patient_schema = published_schema(create_patient_app)
therapist_schema = published_schema(create_therapist_app)


@patient_schema.parametrize()
@BOUNDED
def test_patient_service_answers_as_its_openapi_document_says(case, seeded_patient_app):
    case.call_and_validate(app=seeded_patient_app, headers=AUTH, checks=CHECKS)


@therapist_schema.parametrize()
@BOUNDED
def test_therapist_service_answers_as_its_openapi_document_says(case, seeded_therapist_app):
    case.call_and_validate(app=seeded_therapist_app, headers=AUTH, checks=CHECKS)
