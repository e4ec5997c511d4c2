"""Each service's published OpenAPI document against the service itself: bounded schemathesis runs
over every operation, with a valid token, with every check schemathesis has but the two named at
`CHECKS`: server errors, responses (status, content type, headers, body) the document does not
describe, requests it forbids that the server accepts, methods a path does not have (405 with
`Allow`), auth ignored; and — with valid data only — that the server accepts what the document
allows."""
from __future__ import annotations

import jsonschema_rs
import pytest
import schemathesis
from conftest import API_TOKENS, AUTH
from helpers import assert_problem, pointers
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from patient_service import create_app as create_patient_app
from shared.http import Blueprint
from therapist_service import create_app as create_therapist_app

# Unknown query parameters are ignored on purpose (pagination and filters are parsed from the
# same query string by separate schemas); the token is ours to send, not schemathesis' to vary.
GENERATION = {"allow-extra-parameters": False, "with-security-parameters": False}
CONFIG = SchemathesisConfig.from_dict({"generation": GENERATION})
POSITIVE_CONFIG = SchemathesisConfig.from_dict({"generation": {**GENERATION, "mode": "positive"}})
# Every check schemathesis has (`--checks all`: `schemathesis.checks.CHECKS`), but two:
# - `positive_data_acceptance`: the services validate more than JSON Schema can say (time ranges,
#   `end` after `start`, duplicates, a MID held by another); the document names each such rule with
#   `x-server-rule`, and `accepts_what_the_document_allows` below is this check knowing them;
# - `object_level_authorization`: it needs a second user's credentials in schemathesis' own
#   configuration; who may touch what is tested where the credentials are (tests/auth/: every route
#   x scope, organisations kept apart).
# `negative_data_rejection` holds because what the server reads leniently is what the document says
# (a blank participant e-mail is "no address", `dry_run` is a JSON boolean, ...), with one reading
# of its own: a batch in `batch` mode refuses an invalid item as that item's error in a 2xx answer
# (`refuses_invalid_data`).


def refuses_invalid_data(ctx, response, case):
    """`negative_data_rejection`, where a batch's per-item error counts as refusing the item."""
    if 200 <= response.status_code < 300 and isinstance(case.body, dict) and case.body.get("mode") == "batch":
        results = (response.json() or {}).get("results") or []
        if any(result.get("action") == "error" for result in results):
            return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, refuses_invalid_data, missing_required_header, unsupported_method,
          allow_header_conformance, use_after_free, ensure_resource_availability, ignored_auth]
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
    # 422, or 400 on the two routes of upstream wire formats (SPEC §5): validation, whatever the code
    if status in (400, 422) and problem.get("type") == "validation-error" and errors and all(
            e.get("type") in ITEM_STATES_OF_THE_DATA or _server_rule_names(document, operation, e) for e in errors):
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


@pytest.mark.parametrize("service, path, allowed", [
    ("therapist", "/api/appointments", {"GET", "HEAD", "OPTIONS", "POST"}),
    ("therapist", "/api/imports/run", {"OPTIONS", "POST"}),
    ("patient", "/api/patients/1/history", {"GET", "HEAD", "OPTIONS"}),
])
def test_a_method_the_path_does_not_have_is_405_with_allow_before_any_body_check(make_app, service, path, allowed):
    response = make_app(service).test_client().put(path, headers=AUTH)  # no body: the body check would say 400
    assert_problem(response, 405)
    assert set(response.headers["Allow"].split(", ")) == allowed


@pytest.mark.parametrize("service, path", [("patient", "/api/patients/batch"), ("therapist", "/api/therapists/batch"),
                                           ("therapist", "/api/appointments/batch")])
@pytest.mark.parametrize("dry_run", [0, 1, "true", "yes", None])
def test_dry_run_is_a_json_boolean(make_app, service, path, dry_run):
    response = make_app(service).test_client().post(path, json={"items": [{}], "dry_run": dry_run}, headers=AUTH)
    assert_problem(response, 422)
    assert pointers(response) == ["/dry_run"]


def test_an_overlapping_batch_item_is_answered_as_the_document_says(therapist_client):
    from appointments.support import appointment

    items = [appointment("a-1"), appointment("a-2", start="2025-07-14 09:30", end="2025-07-14 10:00")]
    response = therapist_client.post("/api/appointments/batch", json={"mode": "batch", "items": items}, headers=AUTH)
    [_, error] = response.get_json()["results"]
    assert error["errors"][0]["conflicting_id"] == response.get_json()["results"][0]["id"]
    doc = document(create_therapist_app)
    schema = doc["paths"]["/api/appointments/batch"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert allows(doc, schema, response.get_json())


def test_a_participant_email_is_an_address_or_blank_as_the_document_says():
    doc = document(create_therapist_app)
    schema = doc["components"]["schemas"]["ParticipantItem"]
    base = {"participantId": "p-1"}
    for email, allowed in (("jana@example.de", True), ("", True), ("   ", True), ("not-an-address", False)):
        assert allows(doc, schema, {**base, "email": email}) is allowed, email


def test_documentation_only_decorators_document_the_view_without_wrapping_it():
    """`Blueprint.doc` and `Blueprint.alt_response` only describe: the view they return is the
    view they were given (no call-through per request), holding what the document shows."""
    blueprint = Blueprint("example", __name__)

    def view() -> str:
        return "ok"

    documented = blueprint.doc(summary="An example")(blueprint.alt_response(404, description="not there")(view))

    assert documented is view
    assert view._apidoc["manual_doc"] == {"summary": "An example"}
    assert view._apidoc["response"]["responses"][404][0]["description"] == "not there"
