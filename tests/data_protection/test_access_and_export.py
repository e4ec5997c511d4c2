"""The access log (SPEC §10.3), the export (§10.2) and the PHI header (§10.5), over REST with a
real database; the export of a patient that came in through the bucket includes its files' records."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import quote

from conftest import AUTH, OTHER_TOKEN
from patient_import.support import MAX, get_json, run_pass, sample, sample_bytes
from sqlalchemy import text
from test_patients_api import create

OTHER_AUTH = {"Authorization": f"Bearer {OTHER_TOKEN}"}
ENTRY_KEYS = {"id", "read_at", "actor", "patient_id", "what"}


def access_log(client, patient_id: int) -> list[dict]:
    return get_json(client, f"/api/patients/{patient_id}/access-log?page_size=100")


def read_every_way(client, patient: dict) -> None:
    patient_id = patient["id"]
    for path in (f"/api/patients/{patient_id}", f"/api/patients/{patient_id}?at={quote(patient['updated_at'])}",
                 f"/api/patients/{patient_id}/history", f"/api/patients/{patient_id}/consents",
                 f"/api/patients/{patient_id}/registrations", f"/api/patients/{patient_id}/export",
                 f"/api/patients?email={patient['email']}"):
        assert client.get(path, headers=AUTH).status_code == 200, path


def test_each_kind_of_read_is_logged_with_actor_time_and_what(patient_client):
    patient = create(patient_client)
    before = datetime.now(UTC)

    read_every_way(patient_client, patient)
    assert patient_client.get(f"/api/patients/{patient['id']}", headers=OTHER_AUTH).status_code == 200

    entries = access_log(patient_client, patient["id"])
    assert [(e["what"], e["actor"]) for e in entries] == [
        ("record", "other"), ("list", "tests"), ("export", "tests"), ("registrations", "tests"),
        ("consents", "tests"), ("history", "tests"), ("as-of", "tests"), ("record", "tests")]
    assert all(set(entry) == ENTRY_KEYS and entry["patient_id"] == patient["id"] for entry in entries)
    assert all(before <= datetime.fromisoformat(e["read_at"]) <= datetime.now(UTC) for e in entries)


def test_the_log_holds_ids_actors_and_times_only(patient_client, admin_engine):
    patient = create(patient_client)
    read_every_way(patient_client, patient)

    with admin_engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM patient_service.access_log")).mappings().all()
    assert len(rows) == 7 and set(rows[0]) == ENTRY_KEYS
    stored = json.dumps([dict(row) for row in rows], default=str)
    for value in (patient["vorname"], patient["nachname"], patient["email"], patient["geburtsdatum"]):
        assert value not in stored


def test_a_list_logs_every_patient_it_shows_and_nothing_else(patient_client):
    shown = [create(patient_client, email=f"p{i}@example.de", vorname=f"P{i}") for i in range(3)]

    assert len(get_json(patient_client, "/api/patients?page_size=2")) == 2

    assert [e["what"] for e in access_log(patient_client, shown[0]["id"])] == ["list"]
    assert [e["what"] for e in access_log(patient_client, shown[1]["id"])] == ["list"]
    assert access_log(patient_client, shown[2]["id"]) == []


def test_failed_reads_writes_and_the_log_itself_are_not_logged(patient_client, admin_engine):
    patient = create(patient_client)
    patient_client.patch(f"/api/patients/{patient['id']}", json={"plz": "52064"}, headers=AUTH)
    patient_client.get(f"/api/patients/{patient['id']}?at=2000-01-01T00:00:00Z", headers=AUTH)  # 404: not yet
    patient_client.get("/api/patients/999999", headers=AUTH)
    access_log(patient_client, patient["id"])

    assert access_log(patient_client, patient["id"]) == []


def test_the_log_answers_404_for_an_unknown_patient_and_stays_readable_after_erasure(patient_client):
    patient = create(patient_client)
    get_json(patient_client, f"/api/patients/{patient['id']}")
    assert patient_client.get("/api/patients/999999/access-log", headers=AUTH).status_code == 404

    erased = patient_client.post(f"/api/patients/{patient['id']}/erasure", json={"reason": "Art. 17"}, headers=AUTH)

    assert erased.status_code == 200
    assert [e["what"] for e in access_log(patient_client, patient["id"])] == ["record"]


def test_the_log_is_paged_newest_first(patient_client):
    patient = create(patient_client)
    for _ in range(3):
        get_json(patient_client, f"/api/patients/{patient['id']}")

    response = patient_client.get(f"/api/patients/{patient['id']}/access-log?page=1&page_size=2", headers=AUTH)

    assert json.loads(response.headers["X-Pagination"]) == {"total": 3, "page": 1, "page_size": 2, "total_pages": 2}
    first, second = response.get_json()
    assert first["id"] > second["id"]


def test_export_of_a_bucket_patient_holds_everything_as_an_attachment(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    [patient] = get_json(client, "/api/patients")
    patient_id = patient["id"]
    client.patch(f"/api/patients/{patient_id}", json={"plz": "52064"}, headers=AUTH)
    current = get_json(client, f"/api/patients/{patient_id}")

    response = client.get(f"/api/patients/{patient_id}/export", headers=AUTH)

    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == f'attachment; filename="patient-{patient_id}-export.json"'
    assert response.headers["X-Contains-PHI"] == "true" and response.headers["Cache-Control"] == "no-store"
    export = response.get_json()
    assert set(export) == {"exported_at", "patient", "deleted_at", "versions", "consents", "registrations",
                           "imports", "access_log"}
    assert export["patient"] == current and export["deleted_at"] is None
    assert export["versions"] == get_json(client, f"/api/patients/{patient_id}/history")
    assert export["consents"] == get_json(client, f"/api/patients/{patient_id}/consents")
    assert export["consents"][0]["metadata"] == sample(MAX)["consent_metadata"]
    assert export["registrations"] == get_json(client, f"/api/patients/{patient_id}/registrations")
    assert [(i["name"], i["status"]) for i in export["imports"]] == [(MAX, "succeeded")]
    assert [e["what"] for e in export["access_log"]] == ["list", "record", "export"]


def test_export_of_a_soft_deleted_patient_still_holds_its_data(patient_client):
    patient = create(patient_client)
    assert patient_client.delete(f"/api/patients/{patient['id']}", headers=AUTH).status_code == 204

    export = get_json(patient_client, f"/api/patients/{patient['id']}/export")

    assert export["deleted_at"] is not None and export["patient"]["email"] == patient["email"]
    assert len(export["versions"]) == 2


def test_patient_answers_carry_x_contains_phi(patient_client):
    patient = create(patient_client)
    for method, path in (("get", "/api/patients"), ("get", f"/api/patients/{patient['id']}"),
                         ("get", f"/api/patients/{patient['id']}/history"),
                         ("get", f"/api/patients/{patient['id']}/access-log"),
                         ("get", "/api/patients/999999")):
        response = getattr(patient_client, method)(path, headers=AUTH)
        assert response.headers["X-Contains-PHI"] == "true", path
