"""Each service's published OpenAPI document against the service itself: bounded schemathesis runs
over every operation, with a valid token, checking for server errors and for responses (status,
content type, headers, body) that the document does not describe, and — with valid data only —
that the server accepts what the document allows."""
from __future__ import annotations

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from conftest import API_TOKENS, AUTH
from helpers import assert_problem, pointers
from patient_service import create_app as create_patient_app
from therapist_service import create_app as create_therapist_app

# Unknown query parameters are ignored on purpose (pagination and filters are parsed from the
# same query string by separate schemas); the token is ours to send, not schemathesis' to vary.
GENERATION = {"allow-extra-parameters": False, "with-security-parameters": False}
CONFIG = SchemathesisConfig.from_dict({"generation": GENERATION})
POSITIVE_CONFIG = SchemathesisConfig.from_dict({"generation": {**GENERATION, "mode": "positive"}})
# No server errors, and every response as documented. Not `negative_data_rejection`: the services
# validate more than JSON Schema can say (names trimmed before their length is checked, time
# ranges, duplicates), so it would report the contract, not a fault. Acceptance of valid data is
# checked below, by `accepts_what_the_document_allows`.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Bounded and repeatable: the same examples on every run (the whole file, both services and both
# kinds of run, takes about 90 s of CPU; the positive runs below about 40 s).
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


def published_schema(create_app, config=CONFIG):
    """The OpenAPI document as the service serves it. Building the app and serving the document
    touch no database, so placeholder settings do; the calls go to a real app (`app=`) below.

    (`schemathesis.pytest.from_fixture` would be the lazy way, but it does not run under pytest 9.)
    """
    app = create_app({"DATABASE_URL": "postgresql://localhost/unused", "API_TOKENS": API_TOKENS,
                      "IMPORTS_ENABLED": False})
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=config)


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


# ---- valid data is accepted ----------------------------------------------------------------------
# For a request the document allows, the server may answer what the document names as a state of
# the data (401 no such token, 404, 409 duplicate or stale, 410 deleted, 412 If-Match) — and 422
# only at a property whose document names a rule JSON Schema cannot say (`x-server-rule`).
STATES_OF_THE_DATA = {401, 404, 409, 410, 412}
# The same states for one item of a batch (its 422 in transaction mode lists them per item).
ITEM_STATES_OF_THE_DATA = {"not-found", "gone", "duplicate", "stale-update", "conflict", "precondition-failed",
                          "overlap"}


def _resolve(document: dict, node: dict) -> dict:
    while "$ref" in node:
        node = document["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _properties_at(document: dict, node: dict, tokens: list[str]):
    """Every property schema along a JSON pointer (through `$ref`, `allOf`/`anyOf`, arrays)."""
    node = _resolve(document, node)
    yield node
    for branch in node.get("allOf", []) + node.get("anyOf", []) + node.get("oneOf", []):
        yield from _properties_at(document, branch, tokens)
    if not tokens:
        return
    head, rest = tokens[0].replace("~1", "/").replace("~0", "~"), tokens[1:]
    if head in node.get("properties", {}):
        yield from _properties_at(document, node["properties"][head], rest)
    elif head.isdigit() and isinstance(node.get("items"), dict):
        yield from _properties_at(document, node["items"], rest)


def _server_rule_names(document: dict, operation: dict, error: dict) -> bool:
    """Whether the property an error names carries `x-server-rule`."""
    if "parameter" in error:
        found = [p["schema"] for p in operation.get("parameters", []) if p["name"] == error["parameter"]]
    else:
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        found = list(_properties_at(document, body, error["pointer"].strip("/").split("/")))
    return any("x-server-rule" in schema for schema in found)


def accepts_what_the_document_allows(ctx, response, case) -> None:
    status = response.status_code
    if status < 400 or status in STATES_OF_THE_DATA:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    document = case.operation.schema.raw_schema
    operation = document["paths"][case.operation.path][case.method.lower()]
    errors = problem.get("errors") or []
    if status == 422 and errors and all(e.get("type") in ITEM_STATES_OF_THE_DATA
                                        or _server_rule_names(document, operation, e) for e in errors):
        return
    raise AssertionError(f"{case.method} {case.formatted_path} refused data its document allows: "
                         f"{status} {problem}")


POSITIVE = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
positive_patient_schema = published_schema(create_patient_app, POSITIVE_CONFIG)
positive_therapist_schema = published_schema(create_therapist_app, POSITIVE_CONFIG)


@positive_patient_schema.parametrize()
@POSITIVE
def test_patient_service_accepts_every_request_its_document_allows(case, seeded_patient_app):
    case.call_and_validate(app=seeded_patient_app, headers=AUTH,
                           checks=[not_a_server_error, accepts_what_the_document_allows])


@positive_therapist_schema.parametrize()
@POSITIVE
def test_therapist_service_accepts_every_request_its_document_allows(case, seeded_therapist_app):
    case.call_and_validate(app=seeded_therapist_app, headers=AUTH,
                           checks=[not_a_server_error, accepts_what_the_document_allows])


# ---- each place the document once allowed what the server refuses --------------------------------

def document(create_app) -> dict:
    return published_schema(create_app).raw_schema


def allows(doc: dict, schema: dict, instance) -> bool:
    """Whether an OpenAPI 3.0 schema of `doc` admits `instance` (`nullable` read as JSON Schema)."""
    def as_json_schema(node):
        if isinstance(node, list):
            return [as_json_schema(item) for item in node]
        if not isinstance(node, dict):
            return node
        converted = {key: as_json_schema(value) for key, value in node.items() if key != "nullable"}
        return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") else converted

    root = {"components": as_json_schema(doc["components"]), **as_json_schema(schema)}
    return jsonschema_rs.Draft7Validator(root).is_valid(instance)


def request_body(doc: dict, path: str, method: str) -> dict:
    return doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def query_parameter(doc: dict, path: str, name: str) -> dict:
    return next(p["schema"] for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name)


def test_page_has_the_maximum_the_server_enforces(patient_client):
    last_page = query_parameter(document(create_patient_app), "/api/patients", "page")["maximum"]
    beyond = patient_client.get(f"/api/patients?page={last_page + 1}&page_size=100", headers=AUTH)
    assert_problem(beyond, 422)
    last = patient_client.get(f"/api/patients?page={last_page}&page_size=100", headers=AUTH)
    assert last.status_code == 200 and last.get_json() == []


@pytest.mark.parametrize("create_app, path, group, body", [
    (create_patient_app, "/api/patients", "zeitliche_verfuegbarkeit", dict(PATIENTS[0])),
    (create_therapist_app, "/api/therapists", "availability", dict(THERAPISTS[1])),
])
def test_weekly_hours_allow_weekday_keys_only(create_app, path, group, body):
    doc = document(create_app)
    schema = request_body(doc, path, "post")
    hours = {"montag": ["09:00-12:00"], "sonntag": []}
    body[group] = hours if group == "zeitliche_verfuegbarkeit" else {"telephone_hours": hours}
    assert allows(doc, schema, body)
    hours["feiertag"] = ["09:00-12:00"]
    assert not allows(doc, schema, body)


@pytest.mark.parametrize("create_app, path", [(create_patient_app, "/api/patients/batch"),
                                              (create_therapist_app, "/api/therapists/batch")])
def test_batch_items_are_not_nullable(create_app, path):
    doc = document(create_app)
    assert not allows(doc, request_body(doc, path, "post"), {"items": [None]})


def test_patient_email_must_be_an_address():
    doc = document(create_patient_app)
    assert doc["components"]["schemas"]["Patient"]["properties"]["email"]["format"] == "email"


def test_a_patient_group_when_sent_needs_max_km():
    doc = document(create_patient_app)
    schema = request_body(doc, "/api/patients/{patient_id}", "put")
    assert allows(doc, schema, {**PATIENTS[0], "raeumliche_verfuegbarkeit": None})
    assert allows(doc, schema, {**PATIENTS[0], "raeumliche_verfuegbarkeit": {"max_km": 5}})
    assert not allows(doc, schema, {**PATIENTS[0], "raeumliche_verfuegbarkeit": {}})


def test_patch_without_a_body_is_refused_as_the_document_requires(patient_client):
    doc = document(create_patient_app)
    assert doc["paths"]["/api/patients/{patient_id}"]["patch"]["requestBody"]["required"] is True
    patient = patient_client.post("/api/patients", json=PATIENTS[0], headers=AUTH).get_json()
    response = patient_client.patch(f"/api/patients/{patient['id']}", headers=AUTH)
    assert_problem(response, 400)


@pytest.mark.parametrize("path, body, group, pointer", [
    ("/api/patients", dict(PATIENTS[0]), "zeitliche_verfuegbarkeit", "/zeitliche_verfuegbarkeit/montag/1"),
    ("/api/therapists", dict(THERAPISTS[1]), "availability", "/availability/telephone_hours/montag/1"),
])
def test_an_error_in_weekly_hours_points_into_the_document(make_app, path, body, group, pointer):
    client = make_app("patient" if "patients" in path else "therapist").test_client()
    hours = {"montag": ["09:00-12:00", "12:00-11:00"]}
    body[group] = hours if group == "zeitliche_verfuegbarkeit" else {"telephone_hours": hours}
    response = client.post(path, json=body, headers=AUTH)
    assert_problem(response, 422)
    assert pointers(response) == [pointer]
    body[group] = {"feiertag": []} if group == "zeitliche_verfuegbarkeit" else {"telephone_hours": {"feiertag": []}}
    assert pointers(client.post(path, json=body, headers=AUTH)) == [pointer.replace("montag/1", "feiertag")]


def test_digits_are_the_ascii_digits_the_published_patterns_mean(patient_client):
    """Python's `\\d` also matches other scripts' digits; the document's patterns are read by
    clients where it does not, so the server takes 0-9 only."""
    body = {**PATIENTS[0], "plz": "٥٢٠٦٢", "zeitliche_verfuegbarkeit": {"montag": ["٠٩:٠٠-١٠:٠٠"]}}
    response = patient_client.post("/api/patients", json=body, headers=AUTH)
    assert_problem(response, 422)
    assert sorted(pointers(response)) == ["/plz", "/zeitliche_verfuegbarkeit/montag/0"]
