"""The patient bucket import from a real Google Cloud Storage API (the emulator, the real client)
records the same events as a REST write: `created` then `updated`, thin, origin `import`."""
from __future__ import annotations

import pytest
from conftest import AUTH
from patient_import.conftest import TEST_RETRY_DEADLINE_SECONDS, Emulator
from patient_import.support import BUCKET, Gcs, object_name, registration, run_pass


@pytest.fixture
def emulator(monkeypatch):
    from shared.imports.sources import bucket

    server = Emulator()
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setattr(bucket, "RETRY_DEADLINE_SECONDS", TEST_RETRY_DEADLINE_SECONDS)
    yield server
    server.stop()


def test_bucket_import_publishes_the_same_events_as_rest(emulator, make_app, event_settings, start_relay, reader,
                                                         tmp_path):
    app = make_app("patient", **event_settings, PATIENT_IMPORT_SOURCE=f"gs://{BUCKET}",
                   PATIENT_IMPORT_BACKUP_DIR=str(tmp_path / "backup"), ALERT_OUTBOX_DIR=str(tmp_path / "alerts"))
    gcs = Gcs()
    first = registration("dddd0001")
    gcs.upload(object_name(first), first)
    run_pass(app)
    again = registration("dddd0002", telefon="0241 777777")
    gcs.upload(object_name(again), again)
    run_pass(app)
    rest = app.test_client().post("/api/patients", headers=AUTH, json={
        "vorname": "Rest", "nachname": "Vergleich", "geburtsdatum": "1980-02-02", "email": "rest@example.de"})
    app.test_client().patch(f"/api/patients/{rest.get_json()['id']}", json={"telefon": "0241 1"}, headers=AUTH)
    start_relay(app)

    events = [message.event for message in reader.read("patient", 4)]

    imported = [e for e in events if e["origin"] == "import"]
    by_rest = [e for e in events if e["origin"] == "api"]
    assert [e["type"] for e in imported] == [e["type"] for e in by_rest] == [
        "de.curavani.patient.created", "de.curavani.patient.updated"]
    assert all(set(e["data"]) == {"id", "version", "changed"} for e in events)
    assert imported[1]["data"]["changed"] == by_rest[1]["data"]["changed"] == ["telefon"]
    assert gcs.names() == []  # both files imported and deleted
