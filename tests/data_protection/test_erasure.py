"""Erasure (SPEC §10.1) of a patient that came in through the bucket: the real emulator, the real
importer and backup folder, real PostgreSQL; every text and JSON column of the schema is scanned."""
from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

from conftest import AUTH
from patient_import.support import JUERGEN, get_json, object_name, registration, run_pass, sample_bytes
from sqlalchemy import text

from patient_service import privacy
from shared.db import unit_of_work

# A person of our own, so that a scan for her name cannot match anything else.
PERSON = {"vorname": "Zuzanna", "nachname": "Quellbrunn", "email": "zuzanna.quellbrunn@example.org",
          "geburtsdatum": "1979-03-17"}
TRACES = ("Zuzanna", "Quellbrunn", "zuzanna.quellbrunn@example.org", "1979-03-17")
FIRST, SECOND = "e1a5e001", "e1a5e002"
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "date")


def upload_registration(gcs, token: str, **changes) -> str:
    document = registration(token, **{**PERSON, **changes})
    name = object_name(document)
    gcs.upload(name, document)
    return name


def traces_in_database(admin_engine) -> list[tuple[str, str, str]]:
    """(table, column, trace) for every text, JSON or date column of the patient service's schema
    that holds one of the erased person's traces."""
    found = []
    with admin_engine.connect() as conn:
        columns = conn.execute(text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'patient_service' AND data_type = ANY(:types)"),
            {"types": list(TEXT_TYPES)}).all()
        assert len(columns) > 30, columns  # the scan really looks at the schema
        for table, column in columns:
            for trace in TRACES:
                hits = conn.execute(text(
                    f'SELECT count(*) FROM patient_service."{table}" WHERE CAST("{column}" AS text) ILIKE :pattern'),
                    {"pattern": f"%{trace}%"}).scalar()
                if hits:
                    found.append((table, column, trace))
    return found


def traces_in_folder(folder) -> list[tuple[str, str]]:
    return [(path.name, trace) for path in folder.rglob("*") if path.is_file()
            for trace in TRACES if trace.lower() in path.read_text(errors="replace").lower()
            or trace.lower() in path.name.lower()]


def idempotent_batch(client, key: str, items: list[dict]) -> dict:
    response = client.post("/api/patients/batch", json={"items": items},
                           headers={**AUTH, "Idempotency-Key": key})
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def bucket_patient_with_everything(app, client, gcs) -> dict:
    """Two registrations (a consent each), an idempotent batch and a PATCH; and Jürgen beside her."""
    upload_registration(gcs, FIRST)
    gcs.upload(JUERGEN, sample_bytes(JUERGEN))
    run_pass(app)
    upload_registration(gcs, SECOND, telefon="+49 241 999999")  # the duplicate rule: the same patient
    run_pass(app)
    [patient] = get_json(client, f"/api/patients?email={PERSON['email']}")
    [juergen] = get_json(client, "/api/patients?nachname=Größer")
    body = {k: v for k, v in patient.items() if k not in ("id", "created_at", "updated_at", "version")}
    batch_items = [{**body, "id": patient["id"], "ort": "Eschweiler"}]
    idempotent_batch(client, "batch-0001", batch_items)
    juergen_body = {k: v for k, v in juergen.items() if k not in ("id", "created_at", "updated_at", "version")}
    idempotent_batch(client, "batch-0002", [{**juergen_body, "id": juergen["id"], "ort": "Düren"}])
    patched = client.patch(f"/api/patients/{patient['id']}", json={"plz": "52249"}, headers=AUTH)
    assert patched.status_code == 200
    return {"patient": patched.get_json(), "etag": patched.headers["ETag"], "batch_items": batch_items,
            "juergen": get_json(client, f"/api/patients/{juergen['id']}")}


def everything_about(client, patient_id: int) -> dict:
    return {"patient": get_json(client, f"/api/patients/{patient_id}"),
            "history": get_json(client, f"/api/patients/{patient_id}/history"),
            "consents": get_json(client, f"/api/patients/{patient_id}/consents"),
            "registrations": get_json(client, f"/api/patients/{patient_id}/registrations")}


def erase(client, patient_id: int, headers=None, reason="Art. 17 request, ticket 4711"):
    return client.post(f"/api/patients/{patient_id}/erasure", json={"reason": reason},
                       headers={**AUTH, **(headers or {})})


def test_erasure_leaves_no_trace_in_any_column_nor_backup_while_another_patient_is_untouched(
        app, client, gcs, backup_dir, admin_engine):
    setup = bucket_patient_with_everything(app, client, gcs)
    patient_id, juergen = setup["patient"]["id"], setup["juergen"]
    juergen_before = everything_about(client, juergen["id"])
    juergen_backups = {p.name: p.read_bytes() for p in backup_dir.iterdir() if "a91f03cc" in p.name}
    juergen_batch = get_json(client, "/api/batches/batch-0002")
    assert len(list(backup_dir.iterdir())) == 3
    assert {t for _, _, t in traces_in_database(admin_engine)} == set(TRACES)  # the scan finds them before

    response = erase(client, patient_id, {"If-Match": setup["etag"]})

    assert response.status_code == 200, response.get_json()
    erasure = response.get_json()
    assert erasure["patient_id"] == patient_id and erasure["actor"] == "tests"
    assert erasure["reason"] == "Art. 17 request, ticket 4711"
    assert erasure["rows_removed"] == {"patients": 1, "patient_versions": 4, "consents": 2, "registrations": 2,
                                       "imports": 2, "idempotency_keys": 1}
    assert erasure["files_removed"] == 2 and erasure["files_pending"] == 0
    assert not any(trace.lower() in json.dumps(erasure).lower() for trace in TRACES)

    assert traces_in_database(admin_engine) == []
    assert traces_in_folder(backup_dir) == []
    assert {p.name: p.read_bytes() for p in backup_dir.iterdir()} == juergen_backups
    with admin_engine.connect() as conn:
        names = conn.execute(text("SELECT name FROM patient_service.imports ORDER BY id")).scalars().all()
    assert names == [f"registration {FIRST}", JUERGEN, f"registration {SECOND}"]

    assert everything_about(client, juergen["id"]) == juergen_before
    assert get_json(client, "/api/batches/batch-0002") == juergen_batch
    assert get_json(client, "/api/batches/batch-0001")["response"]["type"] == "erased"


def test_reads_and_writes_of_an_erased_patient_answer_410_erased(app, client, gcs):
    patient_id = bucket_patient_with_everything(app, client, gcs)["patient"]["id"]
    erasure = erase(client, patient_id).get_json()

    for path in ("", "?at=2030-01-01T00:00:00Z", "/history", "/consents", "/registrations", "/export"):
        response = client.get(f"/api/patients/{patient_id}{path}", headers=AUTH)
        assert response.status_code == 410, path
        assert response.get_json()["type"] == "erased" and response.get_json()["erasure_id"] == erasure["id"]
    assert client.patch(f"/api/patients/{patient_id}", json={"plz": "52062"}, headers=AUTH).status_code == 410
    assert client.delete(f"/api/patients/{patient_id}", headers=AUTH).status_code == 410
    again = erase(client, patient_id)
    assert again.status_code == 410 and again.get_json()["type"] == "erased"
    assert client.get("/api/patients/999999", headers=AUTH).status_code == 404


def test_a_retried_batch_that_named_the_erased_patient_replays_410_and_writes_nothing(app, client, gcs, admin_engine):
    setup = bucket_patient_with_everything(app, client, gcs)
    erase(client, setup["patient"]["id"])

    response = client.post("/api/patients/batch", json={"items": setup["batch_items"]},
                           headers={**AUTH, "Idempotency-Key": "batch-0001"})

    assert response.status_code == 410 and response.headers["Idempotent-Replayed"] == "true"
    assert response.get_json()["type"] == "erased"
    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM patient_service.patients")).scalar() == 1  # Jürgen


def test_if_match_mismatch_gives_412_and_removes_nothing(app, client, gcs, backup_dir, admin_engine):
    patient_id = bucket_patient_with_everything(app, client, gcs)["patient"]["id"]
    before = everything_about(client, patient_id)
    files = sorted(p.name for p in backup_dir.iterdir())

    response = erase(client, patient_id, {"If-Match": f'"{patient_id}.1"'})

    assert response.status_code == 412
    assert everything_about(client, patient_id)["consents"] == before["consents"]
    assert everything_about(client, patient_id)["registrations"] == before["registrations"]
    assert everything_about(client, patient_id)["patient"] == before["patient"]
    assert sorted(p.name for p in backup_dir.iterdir()) == files
    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM patient_service.erasures")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM patient_service.imports WHERE name LIKE 'quellbrunn%'")
                            ).scalar() == 2


def test_a_crash_between_commit_and_file_deletion_heals_on_the_next_pass(app, client, gcs, backup_dir, admin_engine):
    patient_id = bucket_patient_with_everything(app, client, gcs)["patient"]["id"]
    with app.app_context(), unit_of_work():  # the erasure's transaction commits, then the process dies
        privacy.erase_patient(patient_id, reason="Art. 17", expected_versions=None, actor="tests",
                              backup_dir=str(backup_dir))
    assert len([p for p in backup_dir.iterdir() if FIRST in p.name or SECOND in p.name]) == 2
    assert client.get(f"/api/patients/{patient_id}", headers=AUTH).status_code == 410

    run_pass(app)

    assert traces_in_folder(backup_dir) == []
    assert [p.name for p in backup_dir.iterdir() if FIRST in p.name or SECOND in p.name] == []
    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM patient_service.backup_deletions")).scalar() == 0
        assert conn.execute(text("SELECT files_removed, files_pending FROM patient_service.erasures")).one() == (2, 0)


def test_a_backup_that_cannot_be_deleted_is_kept_on_record_alerted_once_and_retried(
        app, client, gcs, backup_dir, admin_engine, smtp_server):
    patient_id = bucket_patient_with_everything(app, client, gcs)["patient"]["id"]
    [stuck] = [p for p in backup_dir.iterdir() if FIRST in p.name]
    stuck.unlink()
    stuck.mkdir()  # unlink() of a directory fails, whoever runs the test (root ignores permissions)
    (stuck / "keep").write_text("x")

    erasure = erase(client, patient_id).get_json()

    assert erasure["files_removed"] == 1 and erasure["files_pending"] == 1
    run_pass(app)  # sends the alert; the retry fails again
    run_pass(app)
    alerts = [m for m in smtp_server.mailbox.messages if "erasure" in m["Subject"]]
    assert len(alerts) == 1
    assert alerts[0]["Subject"] == f"[patient_service] erasure #{erasure['id']}: backup copy not deleted"
    mail = alerts[0].as_string()
    assert stuck.name in mail and "IsADirectoryError" in mail
    assert not any(trace.lower() in mail.lower() for trace in TRACES)
    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT attempts FROM patient_service.backup_deletions")).scalar() == 3

    shutil.rmtree(stuck)
    run_pass(app)

    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM patient_service.backup_deletions")).scalar() == 0
        assert conn.execute(text("SELECT files_removed, files_pending FROM patient_service.erasures")).one() == (1, 0)


def test_a_later_registration_of_the_same_person_is_imported_as_a_new_patient(app, client, gcs):
    patient_id = bucket_patient_with_everything(app, client, gcs)["patient"]["id"]
    erase(client, patient_id)

    upload_registration(gcs, "e1a5e003")
    run_pass(app)

    [again] = get_json(client, f"/api/patients?email={PERSON['email']}")
    assert again["id"] != patient_id and again["version"] == 1
    assert [r["token"] for r in get_json(client, f"/api/patients/{again['id']}/registrations")] == ["e1a5e003"]
    assert client.get(f"/api/patients/{patient_id}", headers=AUTH).status_code == 410


def test_the_erasure_records_a_patient_erased_event_without_personal_data(app, client, gcs, admin_engine):
    setup = bucket_patient_with_everything(app, client, gcs)
    patient_id, version = setup["patient"]["id"], setup["patient"]["version"]

    erase(client, patient_id)

    with admin_engine.connect() as conn:
        [document] = conn.execute(text(
            "SELECT document FROM patient_service.event_outbox WHERE type = 'de.curavani.patient.erased'")).scalars()
    event = json.loads(document)
    assert event["subject"] == str(patient_id) and event["sequence"] == version + 1
    assert event["data"] == {"id": patient_id, "version": version + 1, "changed": []}


def test_two_racing_erasures_erase_once(app, client, gcs, admin_engine):
    patient_id = bucket_patient_with_everything(app, client, gcs)["patient"]["id"]
    clients = [app.test_client() for _ in range(2)]

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(lambda c: erase(c, patient_id).status_code, clients))

    assert statuses == [200, 410]
    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM patient_service.erasures")).scalar() == 1


def test_erasure_needs_a_reason_and_a_token(client):
    missing = client.post("/api/patients/1/erasure", json={}, headers=AUTH)
    assert missing.status_code == 422
    assert [e["pointer"] for e in missing.get_json()["errors"]] == ["/reason"]
    assert client.post("/api/patients/1/erasure", json={"reason": "x"}).status_code == 401
    assert client.post("/api/patients/1/erasure", json={"reason": "x"}, headers=AUTH).status_code == 404


def test_an_erasure_racing_an_import_of_the_patients_file_neither_deadlocks_nor_fails(app, client, gcs):
    patient_id = bucket_patient_with_everything(app, client, gcs)["patient"]["id"]
    upload_registration(gcs, FIRST, telefon="+49 241 777777")  # re-sent: the same token, changed content
    start = threading.Barrier(2)

    def erase_now():
        start.wait()
        return erase(app.test_client(), patient_id).status_code

    def import_now():
        start.wait()
        return run_pass(app)

    with ThreadPoolExecutor(2) as pool:
        erased, imported = pool.submit(erase_now), pool.submit(import_now)
        assert erased.result() == 200
        imported.result()

    [record] = [r for r in get_json(client, "/api/imports?page_size=100") if r["id"] == 4]
    assert record["status"] in ("succeeded", "failed"), record
    assert "internal-error" not in {e["kind"] for e in record["errors"]}, record["errors"]
    assert record["name"] == f"registration {FIRST}" or record["status"] == "succeeded"
    survivors = get_json(client, f"/api/patients?email={PERSON['email']}")
    assert all(p["id"] != patient_id for p in survivors) and len(survivors) <= 1
