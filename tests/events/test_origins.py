"""The same events whatever the origin (SPEC §9): REST, batch, bucket import and folder import each
record `created` / `updated` / `deleted` with the same `type` and `data` shape, published to a real
broker; nothing for a write that changes nothing, a dry run or a failed file."""
from __future__ import annotations

import copy
import json
from collections import defaultdict

import pytest
from conftest import AUTH, SAMPLES
from sqlalchemy import text

from .support import outbox_events, outbox_rows

PATIENT_FIELDS = {"id", "version", "changed"}
REGISTRATION = json.loads((SAMPLES / "patient-bucket" / "mustermann_max_20250705_0b1ab67b.json").read_text())
SCRAPE = json.loads((SAMPLES / "therapist-folder" / "52074.json").read_text())


def patient_body(n: int, **overrides):
    body = {"vorname": f"Erika{n}", "nachname": "Musterfrau", "geburtsdatum": "1984-03-09",
            "email": f"erika{n}@example.de", "plz": "52062", "ort": "Aachen"}
    body.update(overrides)
    return body


def therapist_body(external_id: str, **overrides):
    body = {"external_id": external_id, "last_modified": "2025-07-02T03:13:24",
            "basic_info": {"first_name": "Thomas", "last_name": f"Zeevaert-{external_id}"},
            "location": {"street": "Theaterstraße", "house_number": "44", "postcode": "52062", "city": "Aachen"}}
    body.update(overrides)
    return body


def registration(token: str, **patient_changes):
    document = copy.deepcopy(REGISTRATION)
    document["registration_token"] = token
    document["patient_data"].update(patient_changes)
    return document


def drop_registration(folder, document):
    data = document["patient_data"]
    name = f"{data['nachname'].lower()}_{data['vorname'].lower()}_20250705_{document['registration_token']}.json"
    (folder / name).write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


def run_import(app):
    with app.app_context():
        return app.extensions["imports"].run_pass()


def shapes_by_origin(events):
    """origin → {type → the set of `data` key sets}: what a consumer sees of each origin."""
    shapes = defaultdict(lambda: defaultdict(set))
    for event in events:
        shapes[event["origin"]][event["type"]].add(tuple(sorted(event["data"])))
    return shapes


@pytest.fixture
def patient_app(make_app, event_settings, tmp_path):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    app = make_app("patient", **event_settings, PATIENT_IMPORT_SOURCE=str(bucket),
                   PATIENT_IMPORT_BACKUP_DIR=str(tmp_path / "backup"))
    app.bucket = bucket
    return app


@pytest.fixture
def therapist_app(make_app, event_settings, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    app = make_app("therapist", **event_settings, THERAPIST_IMPORT_DIR=str(folder),
                   THERAPIST_IMPORT_SETTLE_SECONDS=0)
    app.folder = folder
    return app


def test_patient_events_have_one_shape_from_rest_batch_and_bucket_import(patient_app, start_relay, reader):
    client = patient_app.test_client()
    # REST
    rest = client.post("/api/patients", json=patient_body(1), headers=AUTH).get_json()
    client.patch(f"/api/patients/{rest['id']}", json={"ort": "Köln"}, headers=AUTH)
    client.delete(f"/api/patients/{rest['id']}", headers=AUTH)
    # batch
    batch = client.post("/api/patients/batch", json={"items": [patient_body(2), patient_body(3)]}, headers=AUTH)
    first, second = (item["id"] for item in batch.get_json()["results"])
    client.post("/api/patients/batch", json={"items": [{"id": first, **patient_body(2, ort="Köln")},
                                                        {"op": "delete", "id": second}]}, headers=AUTH)
    # bucket import: a registration, then a second one of the same person with a new phone number
    drop_registration(patient_app.bucket, registration("aaaa0001"))
    run_import(patient_app)
    drop_registration(patient_app.bucket, registration("aaaa0002", telefon="0241 999999"))
    run_import(patient_app)
    start_relay(patient_app)

    events = [message.event for message in reader.read("patient", 3 + 4 + 2)]

    shapes = shapes_by_origin(events)
    assert set(shapes) == {"api", "batch", "import"}
    for origin in ("api", "batch"):
        assert set(shapes[origin]) == {"de.curavani.patient.created", "de.curavani.patient.updated",
                                       "de.curavani.patient.deleted"}
    assert set(shapes["import"]) == {"de.curavani.patient.created", "de.curavani.patient.updated"}
    assert all(shape == {tuple(sorted(PATIENT_FIELDS))} for origin in shapes.values() for shape in origin.values())
    imported = [e for e in events if e["origin"] == "import"]
    assert imported[1]["data"]["changed"] == ["telefon"]
    assert imported[0]["actor"] == "import:1"  # the import, as in the version history


def test_therapist_events_have_one_shape_from_rest_batch_and_folder_import(therapist_app, start_relay, reader):
    client = therapist_app.test_client()
    rest = client.post("/api/therapists", json=therapist_body("rest1"), headers=AUTH).get_json()
    client.patch(f"/api/therapists/{rest['id']}", json={"location": {"city": "Köln"}}, headers=AUTH)
    client.delete(f"/api/therapists/{rest['id']}", headers=AUTH)
    client.post("/api/therapists/batch", json={"items": [therapist_body("batch1"), therapist_body("batch2")]},
                headers=AUTH)
    client.post("/api/therapists/batch", json={"items": [
        therapist_body("batch1", last_modified="2025-07-03T00:00:00", location={"city": "Köln"}),
        {"op": "delete", "id": client.get("/api/therapists?external_id=batch2", headers=AUTH).get_json()[0]["id"]}]},
        headers=AUTH)
    document = copy.deepcopy(SCRAPE)
    entries = document["therapists"][:2]
    document["therapists"] = entries
    (therapist_app.folder / "52074.json").write_text(json.dumps(document), encoding="utf-8")
    run_import(therapist_app)
    entries[0].update(status="modified", last_modified="2026-01-01T00:00:00",
                      availability={**entries[0]["availability"], "waiting_time_weeks": 3})
    entries[1].update(status="deleted", last_modified="2026-01-01T00:00:00")
    (therapist_app.folder / "52075.json").write_text(json.dumps(document), encoding="utf-8")
    run_import(therapist_app)
    start_relay(therapist_app)

    events = [message.event for message in reader.read("therapist", 3 + 4 + 4)]

    shapes = shapes_by_origin(events)
    assert set(shapes) == {"api", "batch", "import"}
    kinds = {f"de.curavani.therapist.{kind}" for kind in ("created", "updated", "deleted")}
    assert all(set(by_type) == kinds for by_type in shapes.values())
    representation = {tuple(sorted(rest))}  # the REST representation's fields, every time
    assert all(shape == representation for by_type in shapes.values() for shape in by_type.values())
    latest = {e["subject"]: e for e in events}
    for subject, event in latest.items():  # data is the representation after the change
        stored = client.get(f"/api/therapists/{subject}/history", headers=AUTH).get_json()[0]
        assert event["data"] == stored["data"] and event["sequence"] == stored["version"]


def test_a_write_that_changes_nothing_records_no_event(patient_app, therapist_app, admin_engine):
    patients, therapists = patient_app.test_client(), therapist_app.test_client()
    patient = patients.post("/api/patients", json=patient_body(1), headers=AUTH).get_json()
    therapist = therapists.post("/api/therapists", json=therapist_body("same"), headers=AUTH).get_json()

    patients.put(f"/api/patients/{patient['id']}", json=patient_body(1), headers=AUTH)
    therapists.put(f"/api/therapists/{therapist['id']}", json=therapist_body("same"), headers=AUTH)
    patients.post("/api/patients/batch", json={"items": [{"id": patient["id"], **patient_body(1)}]}, headers=AUTH)
    therapists.delete(f"/api/therapists/{therapist['id']}", headers=AUTH)
    therapists.delete(f"/api/therapists/{therapist['id']}", headers=AUTH)  # already deleted: unchanged

    assert [e["type"] for e in outbox_events(admin_engine, "patient_service")] == ["de.curavani.patient.created"]
    assert [e["type"] for e in outbox_events(admin_engine, "therapist_service")] == [
        "de.curavani.therapist.created", "de.curavani.therapist.deleted"]


def test_a_dry_run_and_a_rejected_request_record_no_event(patient_app, admin_engine):
    client = patient_app.test_client()
    dry = client.post("/api/patients/batch", json={"items": [patient_body(1), patient_body(2)], "dry_run": True},
                      headers=AUTH)
    assert dry.status_code == 201 and dry.get_json()["dry_run"] is True  # answered as if written
    failing = client.post("/api/patients/batch", json={"mode": "all-or-nothing", "items": [
        patient_body(3), patient_body(4, email="not-an-e-mail")]}, headers=AUTH)
    assert failing.status_code == 422
    client.post("/api/patients", json=patient_body(5), headers=AUTH)
    duplicate = client.post("/api/patients", json=patient_body(5), headers=AUTH)
    assert duplicate.status_code == 409

    assert [e["type"] for e in outbox_events(admin_engine, "patient_service")] == ["de.curavani.patient.created"]


def test_a_failed_file_records_no_event(therapist_app, patient_app, admin_engine):
    document = copy.deepcopy(SCRAPE)
    document["therapists"] = "not a list"
    (therapist_app.folder / "52074.json").write_text(json.dumps(document), encoding="utf-8")
    drop_registration(patient_app.bucket, registration("bbbb0001", geburtsdatum="not a date"))

    assert run_import(therapist_app).files == 1 and run_import(patient_app).files == 1

    assert outbox_rows(admin_engine, "therapist_service") == []
    assert outbox_rows(admin_engine, "patient_service") == []


def test_a_bulk_import_records_one_event_per_version_it_writes(therapist_app, admin_engine):
    (therapist_app.folder / "52074.json").write_text(json.dumps(SCRAPE), encoding="utf-8")
    run_import(therapist_app)

    rows = outbox_rows(admin_engine, "therapist_service")
    with admin_engine.connect() as conn:
        versions = conn.execute(text("SELECT record_id::text, version FROM therapist_service.therapist_versions")).all()
    assert len(versions) >= 4  # the sample's therapists, created by one multi-row INSERT
    assert sorted((row["record_id"], row["sequence"]) for row in rows) == sorted(tuple(v) for v in versions)
    assert {row["type"] for row in rows} == {"de.curavani.therapist.created"}
