"""Files that cannot be imported (SPEC §7.1.2, §7.1.8, §7.3): the object stays in the bucket, the
record says exactly what is wrong, retries back off until quarantine, and on-call gets one alert
per failure round — without any personal data."""
from __future__ import annotations

from datetime import datetime, timedelta

from conftest import AUTH
from sqlalchemy import text

from shared.imports.types import SourceFile

from .support import (
    JUERGEN,
    MAX,
    encode,
    imports,
    object_name,
    patients,
    registration,
    run_pass,
    sample,
    sample_bytes,
    the_import,
)

MAX_FILE_BYTES = 4000


def _bad_files() -> dict[str, tuple[bytes, str, str]]:
    """object name → (content, error kind, error pointer), each with a sample's personal data."""
    files: dict[str, tuple[bytes, str, str]] = {}

    def add(document_or_bytes, kind: str, pointer: str, name: str | None = None) -> None:
        content = document_or_bytes if isinstance(document_or_bytes, bytes) else encode(document_or_bytes)
        files[name or object_name(document_or_bytes)] = (content, kind, pointer)

    add(b'{"patient_data": {"vorname": "Max", "nachname": "Mustermann", ', "truncated", "/",
        name="mustermann_max_20250705_a0000001.json")
    add(b"vorname=Max\nnachname=Mustermann\n", "not-json", "/", name="mustermann_max_20250705_a0000002.json")
    add(encode([sample(MAX)]), "wrong-shape", "/", name="mustermann_max_20250705_a0000003.json")
    missing = registration("a0000004")
    add({k: v for k, v in missing.items() if k != "patient_data"}, "validation", "/patient_data",
        name=object_name(missing))
    add(registration("a0000005", plz="5206"), "validation", "/patient_data/plz")
    add(registration("a0000006", lieblingsfarbe="blau"), "validation", "/patient_data/lieblingsfarbe")
    add(registration("a0000007"), "bad-name", "/", name="Mustermann Max 2025-07-05 a0000007.json")
    add(registration("a0000008"), "token-mismatch", "/registration_token",
        name="mustermann_max_20250705_a0000009.json")
    large = registration("a000000a", base=JUERGEN)
    large["consent_metadata"]["user_agent"] = "Mozilla/5.0 " + "x" * MAX_FILE_BYTES
    add(large, "too-large", "/", name=object_name(large, "20250706"))
    # gcp-storage-emulator refuses any object name with a `..` segment (real GCS accepts them);
    # `.` segments are the dot-segments it keeps. `..` is covered by the next-but-one test.
    add(registration("a000000b"), "bad-name", "/", name="reg/./mustermann_max_20250705_a000000b.json")
    return files


def _forbidden_strings(names: list[str]) -> list[str]:
    words = list(names)
    for sample_name in (MAX, JUERGEN):
        data = sample(sample_name)["patient_data"]
        birth = data["geburtsdatum"]
        words += [data["vorname"], data["nachname"], data["email"], birth, birth.replace("-", ""),
                  datetime.fromisoformat(birth).strftime("%d.%m.%Y"), sample_name.split("_")[0]]
    return words


def test_every_bad_input_stays_in_the_bucket_with_a_specific_error_and_one_alert_without_personal_data(
        make_importer, gcs, smtp_server, backup_dir):
    app = make_importer(IMPORT_MAX_FILE_BYTES=MAX_FILE_BYTES)
    client = app.test_client()
    files = _bad_files()
    for name, (content, _, _) in files.items():
        gcs.upload(name, content)

    summary = run_pass(app)
    run_pass(app)  # a second poll before any retry is due: no second alert

    assert summary.by_status == {"failed": len(files)}, str(summary)
    assert gcs.names() == sorted(files)
    assert patients(client) == []
    for name, (_, kind, pointer) in files.items():
        record = the_import(client, name)
        assert record["status"] == "failed" and record["attempts"] == 1, record
        assert record["next_attempt_at"] is not None
        assert [(e["kind"], e["pointer"]) for e in record["errors"]] == [(kind, pointer)], (name, record["errors"])
        assert record["errors"][0]["detail"]
        assert record["counts"]["created"] == 0

    messages = smtp_server.wait_for(len(files))
    records = {r["id"]: r for r in imports(client)}
    assert sorted(str(m["Subject"]) for m in messages) == sorted(
        f"[patient_service] import failed: #{record_id}" for record_id in records)
    for message in messages:
        body = message.get_content()
        record_id = int(str(message["Subject"]).rsplit("#", 1)[1])
        assert f"GET /api/imports/{record_id}" in body and "Attempts: 1" in body
        assert f"{records[record_id]['errors'][0]['kind']}: 1" in body

    everything = "\n".join(f"{m['Subject']}\n{m['From']}\n{m['To']}\n{m.get_content()}" for m in messages).lower()
    leaked = [word for word in _forbidden_strings(list(files)) if word.lower() in everything]
    assert leaked == [], leaked
    assert "registration a0000005" in everything  # the token names the file instead

    backups = sorted(path.name for path in backup_dir.iterdir())
    assert all("mustermann" not in name.lower() and "groesser" not in name for name in backups), backups


def test_registration_timestamp_before_year_one_in_utc_is_a_validation_error(app, client, gcs):
    early = registration("a000000c")
    early["registration_timestamp"] = "0001-01-01 00:30:00"  # Berlin was ahead of UTC: year 0 in UTC
    gcs.upload(object_name(early), early)

    run_pass(app)

    record = the_import(client, object_name(early))
    assert [(e["kind"], e["pointer"]) for e in record["errors"]] == [("validation", "/registration_timestamp")]


def test_numbers_python_reads_but_postgresql_cannot_store_are_refused_as_not_json(app, client, gcs):
    names = []
    for token, number in (("a000000d", "NaN"), ("a000000e", "-Infinity"), ("a000000f", "1e999")):
        document = registration(token)
        content = encode(document).replace(b'"agb_akzeptiert": true', b'"agb_akzeptiert": ' + number.encode())
        gcs.upload(object_name(document), content)
        names.append(object_name(document))

    run_pass(app)

    for name in names:
        assert [e["kind"] for e in the_import(client, name)["errors"]] == ["not-json"], name


def test_object_name_with_parent_segments_fails_without_reading_the_object(app, client, gcs, smtp_server, backup_dir):
    """The emulator cannot store such a name, so the pass is given the listing entry real GCS would
    return; the name is refused before anything is downloaded or written."""
    name = "reg/../../mustermann_max_20250705_0b1ab67b.json"
    summary = run_pass(app, [SourceFile(name=name, generation=1, size=100)])

    assert summary.by_status == {"failed": 1}
    record = the_import(client, name)
    assert [(e["kind"], e["pointer"]) for e in record["errors"]] == [("bad-name", "/")]
    assert not backup_dir.exists() or list(backup_dir.iterdir()) == []
    [message] = smtp_server.wait_for(1)
    assert "mustermann" not in message.get_content().lower()
    assert "0b1ab67b" not in message.get_content()  # a name of this form is not trusted to hold a token


def _due_now(admin_engine, record_id: int) -> None:
    """Move the retry time into the past instead of waiting for it (the back-off is checked
    from the record before each move)."""
    with admin_engine.begin() as conn:
        conn.execute(text("UPDATE patient_service.imports SET next_attempt_at = now() - interval '1 second' "
                          "WHERE id = :id"), {"id": record_id})


def _delay(record: dict) -> timedelta:
    return datetime.fromisoformat(record["next_attempt_at"]) - datetime.fromisoformat(record["finished_at"])


def test_retries_back_off_then_quarantine_and_retry_starts_the_count_afresh(
        app, client, gcs, smtp_server, admin_engine):
    bad = registration("b0000001", plz="5206")
    name = object_name(bad)
    gcs.upload(name, bad)

    run_pass(app)
    first = the_import(client, name)
    assert (first["status"], first["attempts"], _delay(first)) == ("failed", 1, timedelta(seconds=60))

    run_pass(app)  # not due yet: nothing happens
    assert the_import(client, name)["attempts"] == 1

    _due_now(admin_engine, first["id"])
    run_pass(app)
    second = the_import(client, name)
    assert (second["status"], second["attempts"], _delay(second)) == ("failed", 2, timedelta(seconds=120))

    _due_now(admin_engine, first["id"])
    run_pass(app)
    third = the_import(client, name)
    assert (third["status"], third["attempts"], third["next_attempt_at"]) == ("quarantined", 3, None)
    assert [(e["kind"], e["pointer"]) for e in third["errors"]] == [("validation", "/patient_data/plz")]

    _due_now(admin_engine, first["id"])
    run_pass(app)  # quarantined: not tried again, whatever the clock says
    assert the_import(client, name)["attempts"] == 3
    assert gcs.names() == [name]
    messages = smtp_server.wait_for(2)
    assert [str(m["Subject"]) for m in messages] == [f"[patient_service] import failed: #{first['id']}",
                                                    f"[patient_service] import quarantined: #{first['id']}"]
    assert "quarantined until the file changes or someone retries it" in messages[1].get_content()

    response = client.post(f"/api/imports/{first['id']}/retry", headers=AUTH)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert (response.get_json()["status"], response.get_json()["attempts"]) == ("pending", 0)
    run_pass(app)
    retried = the_import(client, name)
    assert (retried["status"], retried["attempts"], _delay(retried)) == ("failed", 1, timedelta(seconds=60))
    assert len(smtp_server.wait_for(3)) == 3  # a new round: its first failure is alerted again
    assert client.post(f"/api/imports/{first['id']}/retry", headers=AUTH).status_code == 202
    assert client.post(f"/api/imports/{first['id']}/retry", headers=AUTH).status_code == 409  # pending


def test_fixed_file_uploaded_again_is_imported_although_the_old_generation_is_quarantined(
        make_importer, gcs, smtp_server):
    app = make_importer(PATIENT_IMPORT_MAX_ATTEMPTS=1)
    client = app.test_client()
    bad = registration("b0000002", plz="5206")
    name = object_name(bad)
    gcs.upload(name, bad)
    run_pass(app)
    assert the_import(client, name)["status"] == "quarantined"
    assert [str(m["Subject"]).split(":")[0] for m in smtp_server.wait_for(1)] == [
        "[patient_service] import quarantined"]

    fixed_generation = gcs.upload(name, registration("b0000002", plz="52062"))
    run_pass(app)

    old, new = [r for r in imports(client) if r["name"] == name]
    assert old["status"] == "quarantined"
    assert (new["status"], new["generation"], new["counts"]["created"]) == ("succeeded", fixed_generation, 1)
    assert [p["plz"] for p in patients(client)] == ["52062"]
    assert gcs.names() == []
    assert len(smtp_server.messages) == 1


def test_backoff_is_capped_at_24_hours(make_importer, gcs, admin_engine):
    app = make_importer(PATIENT_IMPORT_INTERVAL_SECONDS=50_000.0, PATIENT_IMPORT_MAX_ATTEMPTS=5)
    client = app.test_client()
    gcs.upload("broken_file_20250705_b0000003.json", b"not json")
    run_pass(app)
    assert _delay(the_import(client, "broken_file_20250705_b0000003.json")) == timedelta(seconds=50_000)
    _due_now(admin_engine, the_import(client, "broken_file_20250705_b0000003.json")["id"])
    run_pass(app)
    assert _delay(the_import(client, "broken_file_20250705_b0000003.json")) == timedelta(hours=24)


def test_alert_is_kept_while_smtp_is_down_and_sent_later_without_failing_the_import(app, client, gcs, smtp_server):
    smtp_server.stop()
    gcs.upload("broken_file_20250705_b0000004.json", b"not json")
    gcs.upload(MAX, sample_bytes(MAX))

    summary = run_pass(app)

    assert summary.by_status == {"failed": 1, "succeeded": 1}, str(summary)
    assert [e["kind"] for e in the_import(client, "broken_file_20250705_b0000004.json")["errors"]] == ["not-json"]
    smtp_server.start()
    with app.app_context():
        assert app.extensions["imports"].send_alerts() == 1
        assert app.extensions["imports"].send_alerts() == 0
    [message] = smtp_server.wait_for(1)
    assert str(message["Subject"]).startswith("[patient_service] import failed: #")
