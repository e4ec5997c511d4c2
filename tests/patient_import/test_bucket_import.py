"""Registration files from the bucket become patients, registrations and consents (SPEC §7.1,
§8.1): the real google-cloud-storage client against gcp-storage-emulator, a real database."""
from __future__ import annotations

from conftest import AUTH

from .support import (
    JUERGEN,
    MAX,
    get_json,
    imports_of,
    object_name,
    patient_history,
    patients,
    registration,
    run_pass,
    sample,
    sample_bytes,
    the_import,
    wait_until,
)


def test_running_scheduler_imports_backs_up_and_deletes_both_samples(make_importer, gcs, backup_dir):
    generations = {name: gcs.upload(name, sample_bytes(name)) for name in (MAX, JUERGEN)}
    app = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=1.0)
    client = app.test_client()

    wait_until(lambda: not gcs.names(), what="both objects to be deleted from the bucket")

    for name in (MAX, JUERGEN):
        record = the_import(client, name)
        assert record["status"] == "succeeded", record
        assert record["source"] == "gcs" and record["generation"] == generations[name]
        assert record["counts"]["created"] == 1 and record["attempts"] == 1
    backups = {path.name: path.read_bytes() for path in backup_dir.iterdir()}
    assert len(backups) == 2, backups.keys()
    for name in (MAX, JUERGEN):
        token = sample(name)["registration_token"]
        [(backup_name, content)] = [(n, c) for n, c in backups.items() if token in n]
        assert content == sample_bytes(name)
        nachname = sample(name)["patient_data"]["nachname"]
        assert nachname.lower() not in backup_name.lower() and name.split("_")[0] not in backup_name
    assert not [path for path in backup_dir.iterdir() if path.name.startswith(".")], "temporary left behind"

    [juergen] = patients(client, nachname="Größer")
    assert juergen["email"] == "j.groesser@example.org"
    assert juergen["vorname"] == "Jürgen-Marie" and juergen["geburtsdatum"] == "1987-11-30"
    [max_] = patients(client, email="max.mustermann@example.de")
    assert max_["zeitliche_verfuegbarkeit"] == sample(MAX)["patient_data"]["zeitliche_verfuegbarkeit"]
    assert [v["source"] for v in patient_history(client, max_["id"])] == ["import"]


def test_same_registration_uploaded_again_changes_nothing(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    [patient] = patients(client)

    second_generation = gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)

    _first, second = imports_of(client, MAX)
    assert second["generation"] == second_generation and second["status"] == "succeeded"
    assert second["counts"] == {"created": 0, "updated": 0, "unchanged": 1, "deleted": 0,
                                "ignored_stale": 0, "failed": 0}
    assert patients(client) == [patient]
    assert len(patient_history(client, patient["id"])) == 1
    assert len(get_json(client, f"/api/patients/{patient['id']}/registrations")) == 1
    assert len(get_json(client, f"/api/patients/{patient['id']}/consents")) == 1
    assert gcs.names() == []


def test_same_token_with_changed_content_updates_the_same_patient(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    [patient] = patients(client)

    corrected = registration("0b1ab67b", telefon="+49 241 654321")
    gcs.upload(MAX, corrected)
    run_pass(app)

    assert imports_of(client, MAX)[1]["counts"]["updated"] == 1
    [updated] = patients(client)
    assert (updated["id"], updated["version"], updated["telefon"]) == (patient["id"], 2, "+49 241 654321")
    assert len(get_json(client, f"/api/patients/{patient['id']}/registrations")) == 1
    assert len(get_json(client, f"/api/patients/{patient['id']}/consents")) == 1  # the same consent
    assert gcs.names() == []


def test_same_token_naming_someone_else_is_a_conflict_and_overwrites_nobody(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    [patient] = patients(client)

    # Tokens are short: another person's registration may come with the same one.
    stranger = registration("0b1ab67b", vorname="Erika", nachname="Musterfrau", email="erika@example.org")
    name = object_name(stranger)
    gcs.upload(name, stranger)
    run_pass(app)

    [record] = imports_of(client, name)
    assert record["status"] == "failed"
    assert [e["kind"] for e in record["errors"]] == ["conflict"]
    assert f"patient {patient['id']}" in record["errors"][0]["detail"]
    assert patients(client) == [patient]  # untouched
    assert name in gcs.names()  # kept for a person to look at


def test_same_person_with_new_token_updates_in_place_and_adds_registration_and_consent(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    [patient] = patients(client)

    again = registration("c0ffee42", plz="52064", email="  MAX.Mustermann@Example.DE")
    again["consent_metadata"].update(timestamp_utc="2025-08-01T09:00:00Z", consent_version="2025-08",
                                     newsletter=False)
    name = object_name(again, "20250801")
    gcs.upload(name, again)
    run_pass(app)

    record = the_import(client, name)
    assert record["status"] == "succeeded" and record["counts"]["updated"] == 1, record
    assert record["warnings"] == []
    [updated] = patients(client)
    assert updated["id"] == patient["id"] and updated["version"] == 2 and updated["plz"] == "52064"
    history = patient_history(client, patient["id"])
    assert [v["version"] for v in history] == [2, 1]
    assert history[0]["actor"] == f"import:{record['id']}"

    registrations = get_json(client, f"/api/patients/{patient['id']}/registrations")
    assert [r["token"] for r in registrations] == ["0b1ab67b", "c0ffee42"]
    assert registrations[1]["import_id"] == record["id"]
    assert registrations[1]["registered_at"].startswith("2025-07-05T14:33:55")  # 16:33:55 in Berlin
    consents = get_json(client, f"/api/patients/{patient['id']}/consents")
    assert [c["metadata"] for c in consents] == [sample(MAX)["consent_metadata"], again["consent_metadata"]]
    assert consents[0]["metadata"]["agb_akzeptiert"] is True  # a key the schema does not know, kept
    assert consents[1]["consent_version"] == "2025-08"
    assert [c["registration_id"] for c in consents] == [r["id"] for r in registrations]
    assert gcs.names() == []


def test_same_person_with_new_token_and_same_data_adds_registration_without_new_version(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    again = registration("d00d1e55")
    gcs.upload(object_name(again), again)
    run_pass(app)

    record = the_import(client, object_name(again))
    assert record["counts"]["unchanged"] == 1, record
    [patient] = patients(client)
    assert patient["version"] == 1
    assert len(get_json(client, f"/api/patients/{patient['id']}/registrations")) == 2
    assert len(get_json(client, f"/api/patients/{patient['id']}/consents")) == 2


def test_same_email_with_other_name_is_a_new_patient_with_a_warning(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    [first] = patients(client)

    sibling = registration("5151b1e0", vorname="Moritz")
    gcs.upload(object_name(sibling), sibling)
    run_pass(app)

    record = the_import(client, object_name(sibling))
    assert record["status"] == "succeeded" and record["counts"]["created"] == 1, record
    [warning] = record["warnings"]
    assert warning["kind"] == "possible-duplicate" and f"patient {first['id']}" in warning["detail"]
    assert "Max" not in warning["detail"] and "@" not in warning["detail"]
    assert len(patients(client, email="max.mustermann@example.de")) == 2


def test_same_name_and_birth_date_with_other_email_is_a_new_patient_with_a_warning(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    [first] = patients(client)

    other = registration("0e0e0e0e", email="max.m@example.net")
    gcs.upload(object_name(other), other)
    run_pass(app)

    record = the_import(client, object_name(other))
    assert record["counts"]["created"] == 1, record
    [warning] = record["warnings"]
    assert f"patient {first['id']}" in warning["detail"]
    assert [p["email"] for p in patients(client, nachname="Mustermann")] == [
        "max.mustermann@example.de", "max.m@example.net"]


def test_flask_imports_run_once_imports_pending_files_and_prints_a_summary(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    gcs.upload(JUERGEN, sample_bytes(JUERGEN))

    result = app.test_cli_runner().invoke(args=["imports", "run-once"])

    assert result.exit_code == 0, result.output
    assert "patient_service: 2 file(s) imported: 2 succeeded" in result.output
    ours = [line for line in result.output.splitlines() if "gcp_storage_emulator" not in line]  # the emulator logs URLs
    assert not [line for line in ours if "mustermann" in line.lower()], ours
    assert len(patients(client)) == 2
    assert gcs.names() == []

    again = app.test_cli_runner().invoke(args=["imports", "run-once"])
    assert again.exit_code == 0 and "0 file(s) imported" in again.output


def test_local_folder_bucket_imports_and_deletes_a_file(make_importer, tmp_path, backup_dir):
    folder = tmp_path / "patient-inbox"
    folder.mkdir()
    app = make_importer(PATIENT_IMPORT_SOURCE=str(folder))
    client = app.test_client()
    temporary = folder / f".{MAX}.tmp"  # hidden while it is written, as the docs ask
    temporary.write_bytes(sample_bytes(MAX))
    temporary.rename(folder / MAX)

    summary = run_pass(app)

    assert summary.by_status == {"succeeded": 1}, str(summary)
    record = the_import(client, MAX)
    assert record["source"] == "folder" and record["status"] == "succeeded"
    assert list(folder.iterdir()) == []
    [patient] = patients(client)
    assert patient["email"] == "max.mustermann@example.de"
    [backup] = backup_dir.iterdir()
    assert backup.read_bytes() == sample_bytes(MAX) and "0b1ab67b" in backup.name


def test_api_lists_the_import_and_run_request_is_accepted(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    run_pass(app)
    record = the_import(client, MAX)
    assert get_json(client, f"/api/imports/{record['id']}") == record
    assert [r["id"] for r in get_json(client, "/api/imports?status=succeeded")] == [record["id"]]
    response = client.post("/api/imports/run", headers=AUTH)
    assert response.status_code == 202
