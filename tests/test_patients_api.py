"""The patient REST API (SPEC §5, §6.1) end to end: HTTP in, real PostgreSQL underneath."""
from __future__ import annotations

import json
import re
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from conftest import AUTH, OTHER_TOKEN, TOKEN
from helpers import PROBLEM, assert_problem, at_param, instant_between_writes, pointers
from sqlalchemy import text

OTHER_AUTH = {"Authorization": f"Bearer {OTHER_TOKEN}"}


def patient_body(**overrides):
    body = {
        "anrede": "Herr",
        "geschlecht": "männlich",
        "vorname": "Max",
        "nachname": "Mustermann",
        "geburtsdatum": "2000-01-01",
        "email": "max.mustermann@example.de",
        "telefon": "+49 241 123456",
        "strasse": "Pontstraße 12",
        "plz": "52062",
        "ort": "Aachen",
        "krankenkasse": "AOK Rheinland/Hamburg",
        "symptome": ["Niedergeschlagenheit", "Schlafstörungen"],
        "erfahrung_mit_psychotherapie": False,
        "offen_fuer_gruppentherapie": True,
        "bevorzugtes_therapieverfahren": ["Verhaltenstherapie"],
        "bevorzugtes_therapeutengeschlecht": "egal",
        "zeitliche_verfuegbarkeit": {"montag": ["09:00-12:00"], "mittwoch": ["14:00-18:00"]},
        "raeumliche_verfuegbarkeit": {"max_km": 25},
        "verkehrsmittel": "ÖPNV",
    }
    body.update(overrides)
    return body


def create(client, headers=AUTH, **overrides):
    response = client.post("/api/patients", json=patient_body(**overrides), headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# ---- create and read ---------------------------------------------------------------------------

def test_create_gives_201_with_location_etag_and_the_stored_patient(patient_client):
    response = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)

    assert response.status_code == 201
    body = response.get_json()
    assert response.headers["Location"] == f"/api/patients/{body['id']}"
    assert response.headers["ETag"] == f'"{body["id"]}.1"'
    assert body["version"] == 1
    assert body["created_at"] == body["updated_at"]
    for field, value in patient_body().items():
        assert body[field] == value, field


def test_location_of_created_patient_reads_it_back_with_the_same_etag(patient_client):
    created = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)

    read = patient_client.get(created.headers["Location"], headers=AUTH)

    assert read.status_code == 200
    assert read.get_json() == created.get_json()
    assert read.headers["ETag"] == created.headers["ETag"]


def test_create_stores_email_lower_cased_and_names_trimmed(patient_client):
    body = create(patient_client, email="  Max.Mustermann@Example.DE ", vorname="  Max ", nachname=" Mustermann")

    assert body["email"] == "max.mustermann@example.de"
    assert (body["vorname"], body["nachname"]) == ("Max", "Mustermann")


def test_create_with_only_required_fields_leaves_the_others_null(patient_client):
    required = {"vorname": "Eva", "nachname": "Klein", "geburtsdatum": "1990-05-05", "email": "eva@example.de"}

    response = patient_client.post("/api/patients", json=required, headers=AUTH)

    assert response.status_code == 201
    body = response.get_json()
    assert body["plz"] is None and body["symptome"] is None and body["raeumliche_verfuegbarkeit"] is None


def test_get_unknown_patient_gives_404_problem(patient_client):
    body = assert_problem(patient_client.get("/api/patients/999", headers=AUTH), 404)

    assert body["type"] == "not-found"


def test_patient_responses_carry_cache_control_no_store(patient_client):
    created = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)
    patient_id = created.get_json()["id"]

    responses = [
        created,
        patient_client.get(f"/api/patients/{patient_id}", headers=AUTH),
        patient_client.get("/api/patients", headers=AUTH),
        patient_client.get(f"/api/patients/{patient_id}/history", headers=AUTH),
        patient_client.get(f"/api/patients/{patient_id}?at={at_param(datetime.now(UTC))}", headers=AUTH),
        patient_client.patch(f"/api/patients/{patient_id}", json={"ort": "Köln"}, headers=AUTH),
        patient_client.post("/api/patients", json=patient_body(), headers=AUTH),  # a 409 names the patient
    ]

    for response in responses:
        assert response.headers["Cache-Control"] == "no-store", response.request.path


# ---- list --------------------------------------------------------------------------------------

def test_list_returns_live_patients_in_id_order_as_a_json_array(patient_client):
    ids = [create(patient_client, vorname=name)["id"] for name in ("Anna", "Bert", "Cora")]

    response = patient_client.get("/api/patients", headers=AUTH)

    assert response.status_code == 200
    assert [p["id"] for p in response.get_json()] == ids


@pytest.mark.parametrize("query, expected", [
    ("email=ANNA%40Example.de", ["Anna"]),
    ("nachname=schmidt", ["Anna", "Bert"]),
    ("vorname=BERT", ["Bert"]),
    ("geburtsdatum=1980-02-02", ["Cora"]),
    ("plz=50667", ["Bert"]),
    ("nachname=Schmidt&plz=52062", ["Anna"]),
])
def test_list_filters_by_the_named_fields(patient_client, query, expected):
    create(patient_client, vorname="Anna", nachname="Schmidt", email="anna@example.de", plz="52062")
    create(patient_client, vorname="Bert", nachname="Schmidt", email="bert@example.de", plz="50667")
    create(patient_client, vorname="Cora", nachname="Weber", email="cora@example.de", plz="52062",
           geburtsdatum="1980-02-02")

    response = patient_client.get(f"/api/patients?{query}", headers=AUTH)

    assert response.status_code == 200
    assert [p["vorname"] for p in response.get_json()] == expected


def test_list_filter_updated_since_returns_only_patients_changed_since(patient_client):
    create(patient_client, vorname="Alt")
    changed = create(patient_client, vorname="Neu")
    since = instant_between_writes()
    patient_client.patch(f"/api/patients/{changed['id']}", json={"ort": "Köln"}, headers=AUTH)
    created_later = create(patient_client, vorname="Später")

    response = patient_client.get(f"/api/patients?updated_since={at_param(since)}", headers=AUTH)

    assert [p["id"] for p in response.get_json()] == [changed["id"], created_later["id"]]


def test_list_pagination_header_is_exactly_total_page_page_size_total_pages(patient_client):
    ids = [create(patient_client, vorname=f"Person{n}")["id"] for n in range(5)]

    response = patient_client.get("/api/patients?page=2&page_size=2", headers=AUTH)

    assert [p["id"] for p in response.get_json()] == ids[2:4]
    assert json.loads(response.headers["X-Pagination"]) == {"total": 5, "page": 2, "page_size": 2, "total_pages": 3}


def test_list_past_the_last_page_is_empty_with_the_right_totals(patient_client):
    create(patient_client)

    response = patient_client.get("/api/patients?page=1000", headers=AUTH)

    assert response.status_code == 200
    assert response.get_json() == []
    assert json.loads(response.headers["X-Pagination"]) == {"total": 1, "page": 1000, "page_size": 50, "total_pages": 1}


def test_list_page_beyond_any_database_offset_gives_422_naming_the_parameter(patient_client):
    body = assert_problem(patient_client.get("/api/patients?page=1000000000000000000000", headers=AUTH), 422)

    assert [e["parameter"] for e in body["errors"]] == ["page"]


def test_list_of_nothing_has_zero_pages(patient_client):
    response = patient_client.get("/api/patients", headers=AUTH)

    assert response.get_json() == []
    assert json.loads(response.headers["X-Pagination"]) == {"total": 0, "page": 1, "page_size": 50, "total_pages": 0}


def test_list_page_size_over_100_gives_422_naming_the_parameter(patient_client):
    body = assert_problem(patient_client.get("/api/patients?page_size=101", headers=AUTH), 422)

    assert [e["parameter"] for e in body["errors"]] == ["page_size"]


def test_list_with_malformed_filter_gives_422_naming_the_parameter(patient_client):
    body = assert_problem(patient_client.get("/api/patients?plz=abc&geburtsdatum=gestern", headers=AUTH), 422)

    assert sorted(e["parameter"] for e in body["errors"]) == ["geburtsdatum", "plz"]


def test_list_leaves_out_deleted_patients(patient_client):
    kept = create(patient_client, vorname="Bleibt")
    gone = create(patient_client, vorname="Geht")
    patient_client.delete(f"/api/patients/{gone['id']}", headers=AUTH)

    response = patient_client.get("/api/patients", headers=AUTH)

    assert [p["id"] for p in response.get_json()] == [kept["id"]]


# ---- replace, change, delete -------------------------------------------------------------------

def test_put_replaces_every_field_and_bumps_version_and_etag(patient_client):
    patient = create(patient_client)
    replacement = {"vorname": "Max", "nachname": "Mustermann", "geburtsdatum": "2000-01-01",
                   "email": "max.mustermann@example.de", "plz": "50667"}

    response = patient_client.put(f"/api/patients/{patient['id']}", json=replacement, headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert body["plz"] == "50667"
    assert body["symptome"] is None and body["ort"] is None  # not sent: replaced by nothing
    assert body["version"] == 2
    assert body["updated_at"] > body["created_at"] == patient["created_at"]
    assert response.headers["ETag"] == f'"{patient["id"]}.2"'


def test_put_with_unchanged_content_writes_no_new_version(patient_client):
    patient = create(patient_client)

    response = patient_client.put(f"/api/patients/{patient['id']}", json=patient_body(), headers=AUTH)

    assert response.status_code == 200
    assert response.get_json()["version"] == 1
    assert len(patient_client.get(f"/api/patients/{patient['id']}/history", headers=AUTH).get_json()) == 1


def test_put_with_invalid_body_gives_422_and_changes_nothing(patient_client):
    patient = create(patient_client)

    response = patient_client.put(f"/api/patients/{patient['id']}", json=patient_body(plz="5206"), headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/plz"]
    assert patient_client.get(f"/api/patients/{patient['id']}", headers=AUTH).get_json() == patient


def test_put_without_required_fields_gives_422_naming_each(patient_client):
    patient = create(patient_client)

    response = patient_client.put(f"/api/patients/{patient['id']}", json={"plz": "52062"}, headers=AUTH)

    assert_problem(response, 422)
    assert sorted(pointers(response)) == ["/email", "/geburtsdatum", "/nachname", "/vorname"]


def test_put_of_unknown_patient_gives_404(patient_client):
    assert_problem(patient_client.put("/api/patients/999", json=patient_body(), headers=AUTH), 404)


def test_put_onto_another_patients_identity_gives_409_with_existing_id(patient_client):
    first = create(patient_client, vorname="Anna", email="anna@example.de")
    second = create(patient_client, vorname="Bert", email="bert@example.de")

    response = patient_client.put(f"/api/patients/{second['id']}",
                                  json=patient_body(vorname="ANNA", email="Anna@Example.de"), headers=AUTH)

    body = assert_problem(response, 409)
    assert body["existing_id"] == first["id"]
    assert patient_client.get(f"/api/patients/{second['id']}", headers=AUTH).get_json() == second


def test_patch_onto_another_patients_identity_gives_409_with_existing_id(patient_client):
    first = create(patient_client, vorname="Anna")
    second = create(patient_client, vorname="Bert")

    response = patient_client.patch(f"/api/patients/{second['id']}", json={"vorname": "anna"}, headers=AUTH)

    assert assert_problem(response, 409)["existing_id"] == first["id"]


def test_patch_changes_only_the_fields_sent(patient_client):
    patient = create(patient_client)

    response = patient_client.patch(f"/api/patients/{patient['id']}",
                                    json={"ort": "Köln", "raeumliche_verfuegbarkeit": {"max_km": 5}}, headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert body["ort"] == "Köln"
    assert body["raeumliche_verfuegbarkeit"] == {"max_km": 5}
    assert body["version"] == 2
    unchanged = {k: v for k, v in patient.items() if k not in ("ort", "raeumliche_verfuegbarkeit", "version", "updated_at")}
    assert {k: body[k] for k in unchanged} == unchanged
    assert response.headers["ETag"] == f'"{patient["id"]}.2"'


def test_patch_with_null_for_a_required_field_gives_422_with_pointer(patient_client):
    patient = create(patient_client)

    response = patient_client.patch(f"/api/patients/{patient['id']}", json={"vorname": None}, headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/vorname"]


def test_patch_with_unknown_nested_field_gives_422_with_nested_pointer(patient_client):
    patient = create(patient_client)

    response = patient_client.patch(f"/api/patients/{patient['id']}",
                                    json={"raeumliche_verfuegbarkeit": {"max_km": 5, "min_km": 1}}, headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/raeumliche_verfuegbarkeit/min_km"]


def test_delete_gives_204_and_later_reads_give_410(patient_client):
    patient = create(patient_client)

    response = patient_client.delete(f"/api/patients/{patient['id']}", headers=AUTH)

    assert response.status_code == 204
    assert response.get_data() == b""
    body = assert_problem(patient_client.get(f"/api/patients/{patient['id']}", headers=AUTH), 410)
    assert body["type"] == "gone"


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_writes_to_a_deleted_patient_give_410(patient_client, method):
    patient = create(patient_client)
    patient_client.delete(f"/api/patients/{patient['id']}", headers=AUTH)

    response = getattr(patient_client, method)(f"/api/patients/{patient['id']}", json=patient_body(), headers=AUTH)

    assert_problem(response, 410)


def test_delete_of_unknown_patient_gives_404(patient_client):
    assert_problem(patient_client.delete("/api/patients/999", headers=AUTH), 404)


def test_deleted_patient_still_has_its_history_ending_in_the_deletion(patient_client, admin_engine):
    patient = create(patient_client)
    patient_client.delete(f"/api/patients/{patient['id']}", headers=AUTH)

    response = patient_client.get(f"/api/patients/{patient['id']}/history", headers=AUTH)

    assert response.status_code == 200
    versions = response.get_json()
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["data"]["version"] == 2
    assert versions[0]["data"]["vorname"] == "Max"
    assert versions[0]["source"] == "api" and versions[0]["actor"] == "tests"
    with admin_engine.connect() as conn:
        stored = conn.execute(text("SELECT version, deleted FROM patient_service.patient_versions "
                                   "WHERE record_id = :id ORDER BY version"), {"id": patient["id"]}).all()
    assert [tuple(row) for row in stored] == [(1, False), (2, True)]


def test_same_person_may_register_again_after_deletion(patient_client):
    old = create(patient_client)
    patient_client.delete(f"/api/patients/{old['id']}", headers=AUTH)

    response = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)

    assert response.status_code == 201
    assert response.get_json()["id"] != old["id"]


# ---- validation and HTTP errors ----------------------------------------------------------------

def test_validation_errors_are_problem_json_with_a_pointer_per_field(patient_client):
    response = patient_client.post("/api/patients", json=patient_body(
        plz="1234", raeumliche_verfuegbarkeit={"max_km": 500}, anrede="Dr.", telefon="call me"), headers=AUTH)

    body = assert_problem(response, 422)
    assert body["type"] == "validation-error"
    assert sorted(pointers(response)) == ["/anrede", "/plz", "/raeumliche_verfuegbarkeit/max_km", "/telefon"]
    assert all(error["detail"] for error in body["errors"])
    assert "/plz" in body["detail"]


def test_unknown_field_gives_422_with_pointer(patient_client):
    response = patient_client.post("/api/patients", json=patient_body(lieblingsfarbe="blau"), headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/lieblingsfarbe"]


def test_unknown_nested_field_gives_422_with_nested_pointer(patient_client):
    response = patient_client.post("/api/patients", json=patient_body(
        raeumliche_verfuegbarkeit={"max_km": 10, "umkreis": 5}), headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/raeumliche_verfuegbarkeit/umkreis"]


def test_read_only_fields_in_the_body_give_422(patient_client):
    response = patient_client.post("/api/patients", json=patient_body(id=7, version=3), headers=AUTH)

    assert_problem(response, 422)
    assert sorted(pointers(response)) == ["/id", "/version"]


@pytest.mark.parametrize("geburtsdatum", ["2999-01-01", "1850-01-01", "01.01.2000"])
def test_implausible_birth_date_gives_422(patient_client, geburtsdatum):
    response = patient_client.post("/api/patients", json=patient_body(geburtsdatum=geburtsdatum), headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/geburtsdatum"]


def test_invalid_time_slot_gives_422_naming_the_weekday(patient_client):
    response = patient_client.post("/api/patients", json=patient_body(
        zeitliche_verfuegbarkeit={"montag": ["18:00-09:00"]}), headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response)[0].startswith("/zeitliche_verfuegbarkeit/montag")


def test_string_with_nul_character_gives_422_not_a_server_error(patient_client):
    response = patient_client.post("/api/patients", json=patient_body(symptome=["Angst\u0000"]), headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/symptome/0"]


def test_filter_with_nul_character_gives_422_naming_the_parameter(patient_client):
    body = assert_problem(patient_client.get("/api/patients?email=a%00b", headers=AUTH), 422)

    assert [e["parameter"] for e in body["errors"]] == ["email"]


def test_json_that_is_not_an_object_gives_422(patient_client):
    for document in ("null", "[]", '"Max"'):
        response = patient_client.post("/api/patients", data=document, content_type="application/json", headers=AUTH)
        assert_problem(response, 422)


def test_post_with_an_empty_json_body_gives_422_naming_the_required_fields(patient_client):
    response = patient_client.post("/api/patients", data=b"", content_type="application/json", headers=AUTH)

    assert_problem(response, 422)
    assert "/vorname" in pointers(response)


@pytest.mark.parametrize("data, content_type", [
    ('{"vorname": "Max",', "application/json"),
    ("vorname=Max", "application/x-www-form-urlencoded"),
    ('{"vorname": "Max"}', "text/plain"),
    ('{"vorname": "Max"}'.encode("utf-16"), "application/json"),  # JSON, but not UTF-8
    (b'\xef\xbb\xbf{"vorname": "Max"}', "application/json"),  # a byte-order mark
    (b'{"vorname": "Ma\xed\xa0\x80x"}', "application/json"),  # an encoded surrogate: not UTF-8
])
def test_body_that_is_not_json_gives_400_problem(patient_client, data, content_type):
    response = patient_client.post("/api/patients", data=data, content_type=content_type, headers=AUTH)

    assert_problem(response, 400)


def test_body_over_max_request_bytes_gives_413_problem(make_app):
    client = make_app("patient", MAX_REQUEST_BYTES=1000).test_client()

    response = client.post("/api/patients", json=patient_body(strasse="x" * 2000), headers=AUTH)

    assert_problem(response, 413)
    assert client.get("/api/patients", headers=AUTH).get_json() == []


def test_body_under_max_request_bytes_is_accepted(make_app):
    client = make_app("patient", MAX_REQUEST_BYTES=1000).test_client()

    assert client.post("/api/patients", json=patient_body(), headers=AUTH).status_code == 201


def test_unknown_route_gives_404_problem(patient_client):
    assert_problem(patient_client.get("/api/patienten", headers=AUTH), 404)


def test_wrong_method_gives_405_problem_with_allow_header(patient_client):
    response = patient_client.delete("/api/patients", headers=AUTH)

    assert_problem(response, 405)
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_non_integer_id_gives_404_problem(patient_client):
    assert_problem(patient_client.get("/api/patients/abc", headers=AUTH), 404)


# ---- duplicates (§6.1) -------------------------------------------------------------------------

def test_same_email_and_names_in_other_case_and_spacing_give_409_with_existing_id(patient_client):
    existing = create(patient_client)

    response = patient_client.post("/api/patients", json=patient_body(
        email="  MAX.Mustermann@EXAMPLE.de ", vorname=" max", nachname="MUSTERMANN ",
        geburtsdatum="1999-09-09", plz="10115"), headers=AUTH)

    body = assert_problem(response, 409)
    assert body["type"] == "duplicate"
    assert body["existing_id"] == existing["id"]
    assert len(patient_client.get("/api/patients", headers=AUTH).get_json()) == 1


def test_names_equal_after_nfc_normalisation_and_case_folding_are_duplicates(patient_client):
    composed = unicodedata.normalize("NFC", "Jürgen-Marie")
    decomposed = unicodedata.normalize("NFD", "JÜRGEN-MARIE")
    existing = create(patient_client, vorname=composed, nachname="Größer", email="jm@example.de")

    response = patient_client.post("/api/patients", json=patient_body(
        vorname=decomposed, nachname="GRÖSSER", email="jm@example.de"), headers=AUTH)

    assert assert_problem(response, 409)["existing_id"] == existing["id"]


@pytest.mark.parametrize("overrides", [
    {"vorname": "Moritz"},
    {"nachname": "Musterfrau"},
    {"email": "max.other@example.de"},
])
def test_patients_differing_in_email_or_a_name_are_not_duplicates(patient_client, overrides):
    create(patient_client)

    response = patient_client.post("/api/patients", json=patient_body(**overrides), headers=AUTH)

    assert response.status_code == 201


def test_concurrent_creates_of_the_same_patient_give_one_201_and_one_409(patient_app):
    """Two requests race past any check in Python; only the database's unique index can decide."""
    for attempt in range(5):
        body = patient_body(vorname=f"Renn{attempt}", email=f"race{attempt}@example.de")
        barrier = threading.Barrier(2)

        def create_at_once():
            client = patient_app.test_client()  # one client per thread, as two browsers would be
            barrier.wait(timeout=10)
            return client.post("/api/patients", json=body, headers=AUTH)

        with ThreadPoolExecutor(max_workers=2) as pool:
            responses = [f.result(timeout=30) for f in [pool.submit(create_at_once) for _ in range(2)]]

        by_status = {r.status_code: r.get_json() for r in responses}
        assert sorted(r.status_code for r in responses) == [201, 409], attempt
        assert by_status[409]["existing_id"] == by_status[201]["id"]

    listed = patient_app.test_client().get("/api/patients", headers=AUTH).get_json()
    assert len(listed) == 5


# ---- If-Match ----------------------------------------------------------------------------------

WRITES = {
    "put": lambda client, url, headers: client.put(url, json=patient_body(ort="Köln"), headers=headers),
    "patch": lambda client, url, headers: client.patch(url, json={"ort": "Köln"}, headers=headers),
    "delete": lambda client, url, headers: client.delete(url, headers=headers),
}


@pytest.mark.parametrize("method", WRITES)
def test_if_match_with_the_current_etag_lets_the_write_through(patient_client, method):
    created = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)
    url = created.headers["Location"]

    response = WRITES[method](patient_client, url, {**AUTH, "If-Match": created.headers["ETag"]})

    assert response.status_code in (200, 204)


@pytest.mark.parametrize("method", WRITES)
def test_if_match_with_an_outdated_etag_gives_412_and_changes_nothing(patient_client, method):
    created = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)
    url = created.headers["Location"]
    patient_client.patch(url, json={"plz": "10115"}, headers=AUTH)

    response = WRITES[method](patient_client, url, {**AUTH, "If-Match": created.headers["ETag"]})

    assert assert_problem(response, 412)["type"] == "precondition-failed"
    current = patient_client.get(url, headers=AUTH)
    assert current.get_json()["version"] == 2 and current.get_json()["ort"] == "Aachen"


@pytest.mark.parametrize("method", WRITES)
def test_if_match_star_lets_the_write_through(patient_client, method):
    created = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)

    response = WRITES[method](patient_client, created.headers["Location"], {**AUTH, "If-Match": "*"})

    assert response.status_code in (200, 204)


def test_if_match_with_another_patients_etag_gives_412(patient_client):
    first = patient_client.post("/api/patients", json=patient_body(), headers=AUTH)
    second = patient_client.post("/api/patients", json=patient_body(vorname="Moritz"), headers=AUTH)

    response = patient_client.patch(second.headers["Location"], json={"ort": "Köln"},
                                    headers={**AUTH, "If-Match": first.headers["ETag"]})

    assert_problem(response, 412)


# ---- history and as-of reads -------------------------------------------------------------------

def test_history_lists_every_version_newest_first_with_source_and_acting_token(patient_client):
    patient = create(patient_client)
    url = f"/api/patients/{patient['id']}"
    patient_client.patch(url, json={"ort": "Köln"}, headers=OTHER_AUTH)
    patient_client.put(url, json=patient_body(ort="Bonn"), headers=AUTH)
    patient_client.delete(url, headers=OTHER_AUTH)

    response = patient_client.get(f"{url}/history", headers=AUTH)

    assert response.status_code == 200
    versions = response.get_json()
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert [v["actor"] for v in versions] == ["other", "tests", "other", "tests"]
    assert {v["source"] for v in versions} == {"api"}
    assert [v["data"]["ort"] for v in versions] == ["Bonn", "Bonn", "Köln", "Aachen"]
    assert set(versions[0]) == {"version", "changed_at", "source", "actor", "data"}
    changed = [datetime.fromisoformat(v["changed_at"]) for v in versions]
    assert changed == sorted(changed, reverse=True)
    assert versions[-1]["data"] == patient


def test_history_of_unknown_patient_gives_404(patient_client):
    assert_problem(patient_client.get("/api/patients/999/history", headers=AUTH), 404)


def test_get_at_an_earlier_time_returns_the_state_then(patient_client):
    patient = create(patient_client, ort="Aachen")
    noted = instant_between_writes()
    patient_client.patch(f"/api/patients/{patient['id']}", json={"ort": "Köln"}, headers=AUTH)

    then = patient_client.get(f"/api/patients/{patient['id']}?at={at_param(noted)}", headers=AUTH)
    now = patient_client.get(f"/api/patients/{patient['id']}", headers=AUTH)

    assert then.status_code == 200
    assert then.get_json() == patient
    assert then.headers["ETag"] == f'"{patient["id"]}.1"'
    assert now.get_json()["ort"] == "Köln"


def test_get_at_a_time_without_zone_reads_it_as_utc(patient_client):
    patient = create(patient_client)
    noted = instant_between_writes()
    patient_client.patch(f"/api/patients/{patient['id']}", json={"ort": "Köln"}, headers=AUTH)
    naive_utc = noted.replace(tzinfo=None).isoformat()
    in_berlin = noted.astimezone(timezone(timedelta(hours=2))).isoformat()

    for at in (naive_utc, in_berlin):
        assert patient_client.get(f"/api/patients/{patient['id']}?at={quote(at)}", headers=AUTH).get_json()["ort"] == "Aachen"


def test_get_at_a_time_before_creation_gives_404(patient_client):
    before = datetime.now(UTC) - timedelta(days=1)
    patient = create(patient_client)

    body = assert_problem(patient_client.get(f"/api/patients/{patient['id']}?at={at_param(before)}", headers=AUTH), 404)

    assert body["type"] == "not-found"


def test_get_at_a_time_after_deletion_gives_410(patient_client):
    patient = create(patient_client)
    patient_client.delete(f"/api/patients/{patient['id']}", headers=AUTH)
    after = instant_between_writes()

    assert_problem(patient_client.get(f"/api/patients/{patient['id']}?at={at_param(after)}", headers=AUTH), 410)


def test_get_at_a_time_before_deletion_still_shows_the_deleted_patient(patient_client):
    patient = create(patient_client)
    noted = instant_between_writes()
    patient_client.delete(f"/api/patients/{patient['id']}", headers=AUTH)

    response = patient_client.get(f"/api/patients/{patient['id']}?at={at_param(noted)}", headers=AUTH)

    assert response.status_code == 200
    assert response.get_json() == patient


def test_get_at_with_a_malformed_time_gives_422_naming_the_parameter(patient_client):
    patient = create(patient_client)

    for at in ("yesterday", quote("0001-01-01T00:00:00+01:00")):
        body = assert_problem(patient_client.get(f"/api/patients/{patient['id']}?at={at}", headers=AUTH), 422)
        assert [e["parameter"] for e in body["errors"]] == ["at"]


# ---- authentication and public documents -------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not-a-configured-token-at-all"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer "},
    {"Authorization": TOKEN},
])
def test_missing_or_wrong_token_gives_401_with_www_authenticate_bearer(patient_client, headers):
    for response in (patient_client.get("/api/patients", headers=headers),
                     patient_client.post("/api/patients", json=patient_body(), headers=headers),
                     patient_client.get("/api/patients/1/history", headers=headers)):
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_rejected_token_writes_nothing(patient_client):
    patient_client.post("/api/patients", json=patient_body(), headers={"Authorization": "Bearer wrong-token-0123456789"})

    assert patient_client.get("/api/patients", headers=AUTH).get_json() == []


def test_health_needs_no_token(patient_client):
    response = patient_client.get("/health")

    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_openapi_document_needs_no_token_and_lists_the_patient_routes(patient_client):
    response = patient_client.get("/api/openapi.json")

    assert response.status_code == 200
    paths = response.get_json()["paths"]
    assert {"/api/patients", "/api/patients/{patient_id}", "/api/patients/{patient_id}/history"} <= set(paths)


def test_openapi_document_describes_errors_as_problem_json(patient_client):
    document = patient_client.get("/api/openapi.json").get_json()
    operation = document["paths"]["/api/patients/{patient_id}"]["put"]

    for status in ("401", "404", "409", "410", "412", "413"):
        assert list(operation["responses"][status]["content"]) == [PROBLEM], status
    unprocessable = document["components"]["responses"]["UNPROCESSABLE_ENTITY"]
    assert list(unprocessable["content"]) == [PROBLEM]


def test_docs_page_needs_no_token_and_its_assets_are_served_locally(patient_client):
    page = patient_client.get("/api/docs")

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by the service itself"
        response = patient_client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.get_data()) > 1000, asset


def test_if_match_listing_several_etags_succeeds_when_any_one_is_current(patient_client):
    created = create(patient_client)
    stale, current = f'"{created["id"]}.0"', f'"{created["id"]}.{created["version"]}"'
    response = patient_client.patch(f"/api/patients/{created['id']}", json={"ort": "Köln"},
                                    headers={**AUTH, "If-Match": f"{stale}, {current}"})
    assert response.status_code == 200
    assert response.get_json()["ort"] == "Köln"


def test_names_that_grow_when_case_folded_are_accepted_and_matched(patient_client):
    # "ß" folds to "ss": a 100-character name has a 200-character duplicate key.
    created = create(patient_client, vorname="ß" * 100, nachname="Größer")
    again = patient_client.post("/api/patients", json=patient_body(vorname="ẞ" * 100, nachname="GRÖSSER"),
                                headers=AUTH)  # capital sharp s: folds to "ss" as well
    assert again.status_code == 409
    assert again.get_json()["existing_id"] == created["id"]
