"""Every `/api/` route × a credential with and one without its scope (SPEC §11), generated from
each app's URL map: a route missing from `EXPECTED` — a new one — fails here, and so does one
whose declared scope is not the table's."""
from __future__ import annotations

import uuid

import pytest

from shared.auth import PUBLIC_API_PATHS, required_scopes
from shared.batch.views import BATCH_WRITE_SCOPES

# SPEC §11's table, route by route: (method, URL rule) → the scopes the route accepts.
EXPECTED: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {
    "patient": {
        ("GET", "/api/patients"): ("patients:read",),
        ("POST", "/api/patients"): ("patients:write",),
        ("GET", "/api/patients/<int:patient_id>"): ("patients:read",),
        ("PUT", "/api/patients/<int:patient_id>"): ("patients:write",),
        ("PATCH", "/api/patients/<int:patient_id>"): ("patients:write",),
        ("DELETE", "/api/patients/<int:patient_id>"): ("patients:write",),
        ("GET", "/api/patients/<int:patient_id>/history"): ("patients:read",),
        ("GET", "/api/patients/<int:patient_id>/consents"): ("patients:read",),
        ("GET", "/api/patients/<int:patient_id>/registrations"): ("patients:read",),
        ("POST", "/api/patients/<int:patient_id>/erasure"): ("patients:erase",),
        ("GET", "/api/patients/<int:patient_id>/export"): ("patients:export",),
        ("GET", "/api/patients/<int:patient_id>/access-log"): ("patients:audit",),
        ("POST", "/api/patients/batch"): ("patients:write",),
    },
    "therapist": {
        ("GET", "/api/therapists"): ("therapists:read",),
        ("POST", "/api/therapists"): ("therapists:write",),
        ("GET", "/api/therapists/<int:therapist_id>"): ("therapists:read",),
        ("PUT", "/api/therapists/<int:therapist_id>"): ("therapists:write",),
        ("PATCH", "/api/therapists/<int:therapist_id>"): ("therapists:write",),
        ("DELETE", "/api/therapists/<int:therapist_id>"): ("therapists:write",),
        ("GET", "/api/therapists/<int:therapist_id>/history"): ("therapists:read",),
        ("POST", "/api/therapists/batch"): ("therapists:write",),
        ("GET", "/api/appointments"): ("appointments:read",),
        ("POST", "/api/appointments"): ("appointments:write",),
        ("GET", "/api/appointments/<uuid:appointment_id>"): ("appointments:read",),
        ("DELETE", "/api/appointments/<uuid:appointment_id>"): ("appointments:write",),
        ("GET", "/api/appointments/<uuid:appointment_id>/history"): ("appointments:read",),
        ("POST", "/api/appointments/batch"): ("appointments:write",),
        ("GET", "/api/appointments/participants"): ("participants:read",),
        ("POST", "/api/appointments/participants"): ("participants:write",),
        ("GET", "/api/appointments/participants/<participant_id>"): ("participants:read",),
        ("GET", "/api/appointments/participants/<participant_id>/history"): ("participants:read",),
    },
}
COMMON = {
    ("GET", "/api/imports"): ("imports:read",),
    ("GET", "/api/imports/<int:import_id>"): ("imports:read",),
    ("POST", "/api/imports/run"): ("imports:operate",),
    ("POST", "/api/imports/<int:import_id>/retry"): ("imports:operate",),
    ("GET", "/api/batches/<path:key>"): BATCH_WRITE_SCOPES,
}
SAMPLE_VALUES = {"IntegerConverter": "1", "UUIDConverter": str(uuid.UUID(int=1)), "PathConverter": "some/key",
                 "UnicodeConverter": "p-1"}


def api_routes(app) -> list[tuple[str, str, str]]:
    """(method, rule, a URL of it) for every method of every `/api/` route."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.rule.startswith(PUBLIC_API_PATHS):
            continue
        values = {name: SAMPLE_VALUES[type(converter).__name__] for name, converter in rule._converters.items()}
        url = rule.build(values)[1]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, rule.rule, url))
    return routes


def slug(scope: str) -> str:
    return scope.replace(":", "-")


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_every_route_declares_the_scope_of_the_spec_table(client_app, service):
    app = client_app(service)
    expected = {**EXPECTED[service], **COMMON}
    found = {(method, rule): required_scopes(app, app.url_map.bind("localhost").match(url, method=method)[0], method)
             for method, rule, url in api_routes(app)}
    assert found == expected


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_every_route_refuses_a_credential_without_its_scope_and_admits_one_with_it(client_app, clients, service):
    app = client_app(service)
    http = app.test_client()
    routes = api_routes(app)
    assert len(routes) == len(EXPECTED[service]) + len(COMMON)
    for method, rule, url in routes:
        scopes = {**EXPECTED[service], **COMMON}[(method, rule)]
        body = {} if method in ("POST", "PUT", "PATCH") else None
        for scope in scopes:
            denied = http.open(url, method=method, json=body, headers=clients.auth(f"without-{slug(scope)}")
                               if len(scopes) == 1 else clients.auth("only-imports-read"))
            assert denied.status_code == 403, (method, url, denied.get_json())
            problem = denied.get_json()
            assert problem["type"] == "insufficient-scope" and problem["required_scope"] == scopes[0]
            assert denied.headers["WWW-Authenticate"] == (
                f'Bearer realm="{app.config["SERVICE_NAME"]}", error="insufficient_scope", scope="{scopes[0]}"')
            admitted = http.open(url, method=method, json=body, headers=clients.auth(f"only-{slug(scope)}"))
            assert admitted.status_code not in (401, 403), (method, url, scope, admitted.get_json())


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_every_route_answers_401_without_a_credential_or_with_a_wrong_one(client_app, service):
    app = client_app(service)
    http = app.test_client()
    realm = app.config["SERVICE_NAME"]
    for method, _rule, url in api_routes(app):
        missing = http.open(url, method=method)
        assert missing.status_code == 401, (method, url)
        assert missing.headers["WWW-Authenticate"] == f'Bearer realm="{realm}"'
        assert missing.mimetype == "application/problem+json"
        wrong = http.open(url, method=method, headers={"Authorization": "Bearer not-a-token-of-ours-0123456789"})
        assert wrong.status_code == 401, (method, url)
        assert wrong.headers["WWW-Authenticate"] == f'Bearer realm="{realm}", error="invalid_token"'
