"""What consumers rely on: the published schema holds for every event, no personal data of a
person is on the bus, the message is CloudEvents structured mode; and what on-call relies on:
`/health`, `/metrics`, `flask events tail`, and retention of the outbox."""
from __future__ import annotations

import json
from datetime import date

import jsonschema_rs
import pytest
from conftest import AUTH, ROOT
from helpers import wait_until
from sqlalchemy import text

from .support import outbox_events, outbox_rows
from .test_origins import drop_registration, registration, run_import, therapist_body

SCHEMA = json.loads((ROOT / "docs" / "events" / "events.schema.json").read_text())
PEOPLE = [("Xaverine", "Quendelbaum", "xaverine.q@example.de", "1971-08-23"),
          ("Bartholomäus", "Zwirnmeister", "b.zwirn@example.org", "1999-12-31")]


def people_patterns() -> list[bytes]:
    """Every way a written name, e-mail or birth date could show up in a message."""
    patterns = []
    for first, last, mail, born in PEOPLE:
        day = date.fromisoformat(born)
        for value in (first, last, mail, mail.split("@")[0], born, day.strftime("%d.%m.%Y"), day.strftime("%Y%m%d")):
            patterns += [value.encode(), value.lower().encode(), json.dumps(value).encode()]
    return patterns


@pytest.fixture
def patient_app(make_app, event_settings, tmp_path):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    app = make_app("patient", **event_settings, PATIENT_IMPORT_SOURCE=str(bucket),
                   PATIENT_IMPORT_BACKUP_DIR=str(tmp_path / "backup"))
    app.bucket = bucket
    return app


def write_people(app) -> None:
    client = app.test_client()
    (first, last, mail, born), (first2, last2, mail2, born2) = PEOPLE
    body = {"vorname": first, "nachname": last, "email": mail, "geburtsdatum": born, "telefon": "0241 55555"}
    created = client.post("/api/patients", json=body, headers=AUTH).get_json()
    client.patch(f"/api/patients/{created['id']}", json={"nachname": last + "-Neu", "email": "neu." + mail},
                 headers=AUTH)
    client.post("/api/patients/batch", json={"items": [
        {"vorname": first2, "nachname": last2, "email": mail2, "geburtsdatum": born2}]}, headers=AUTH)
    drop_registration(app.bucket, registration("cccc0001", vorname=first2, nachname=last2 + "x", email="x" + mail2,
                                               geburtsdatum=born2))
    run_import(app)


def test_no_name_email_or_birth_date_of_a_patient_is_on_the_bus(patient_app, start_relay, reader):
    write_people(patient_app)
    start_relay(patient_app)

    received = reader.read("patient", 4)

    assert len(received) == 4
    for message in received:
        everything = message.value + message.key + b"".join(message.headers.values())
        found = [pattern for pattern in people_patterns() if pattern in everything]
        assert found == [], f"{message.event['type']} carries {found}"
    assert {tuple(m.event["data"]) for m in received} == {("id", "version", "changed")}
    renamed = [m.event for m in received if m.event["type"].endswith("updated")]
    assert renamed[0]["data"]["changed"] == ["email", "nachname"]


def test_every_event_matches_the_published_schema_and_is_structured_mode(patient_app, make_app, event_settings,
                                                                        start_relay, reader):
    write_people(patient_app)
    therapists = make_app("therapist", **event_settings)
    client = therapists.test_client()
    created = client.post("/api/therapists", json=therapist_body("schema1"), headers=AUTH).get_json()
    client.delete(f"/api/therapists/{created['id']}", headers=AUTH)
    start_relay(patient_app)
    start_relay(therapists)

    received = reader.read("patient", 4) + reader.read("therapist", 2)

    validator = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)
    for message in received:
        errors = [error.message for error in validator.iter_errors(message.event)]
        assert errors == [], (message.event["type"], errors)
        assert message.headers["content-type"] == b"application/cloudevents+json; charset=UTF-8"
        assert message.key == message.event["subject"].encode()
    assert {m.event["source"] for m in received} == {"/patient_service", "/therapist_service"}


def test_the_schema_refuses_a_person_event_that_carries_data():
    event = {"specversion": "1.0", "id": "6f1c1a8e-1d2b-4c3d-9e4f-5a6b7c8d9e0f", "source": "/patient_service",
             "type": "de.curavani.patient.created", "subject": "1", "time": "2026-01-01T00:00:00+00:00",
             "datacontenttype": "application/json", "sequence": 1, "origin": "api", "actor": "tests",
             "data": {"id": 1, "version": 1, "changed": ["email"]}}
    validator = jsonschema_rs.validator_for(SCHEMA)
    assert validator.is_valid(event)
    assert not validator.is_valid({**event, "data": {**event["data"], "email": "a@example.de"}})


def test_an_erasure_records_a_thin_erased_event(patient_app, admin_engine):
    from shared.db import unit_of_work
    from shared.events import record_erasure
    from shared.schemas import now_utc

    with patient_app.app_context(), unit_of_work():
        record_erasure("patient_service", "patient", 42, version=3, actor="tests", time=now_utc())

    [event] = outbox_events(admin_engine, "patient_service")
    assert event["type"] == "de.curavani.patient.erased"
    assert event["subject"] == "42" and event["sequence"] == 3
    assert event["data"] == {"id": 42, "version": 3, "changed": []}
    assert jsonschema_rs.validator_for(SCHEMA).is_valid(event)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_health_is_503_when_the_relay_thread_started_here_has_died(patient_app, start_relay, monkeypatch):
    client = patient_app.test_client()
    relay = start_relay(patient_app)
    assert client.get("/health").status_code == 200

    def die():
        raise SystemExit("the thread ends")  # not an Exception: the loop does not catch it

    monkeypatch.setattr(relay, "step", die)
    relay.thread.join(timeout=10)

    health = client.get("/health")
    assert health.status_code == 503
    assert {"check": "relay", "detail": "event relay thread dead"} in health.get_json()["failures"]
    assert client.get("/ready").status_code == 200


def metric(client, name: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_show_pending_events_their_age_and_those_published(patient_app, start_relay, reader):
    client = patient_app.test_client()
    assert metric(client, "curavani_events_pending") == 0
    assert metric(client, "curavani_events_oldest_pending_age_seconds") == 0
    before = metric(client, "curavani_events_published_total")
    client.post("/api/patients", json={"vorname": "A", "nachname": "B", "email": "a.b@example.de",
                                       "geburtsdatum": "1980-01-01"}, headers=AUTH)
    assert metric(client, "curavani_events_pending") == 1
    assert metric(client, "curavani_events_oldest_pending_age_seconds") >= 0

    start_relay(patient_app)
    reader.read("patient", 1)

    wait_until(lambda: metric(client, "curavani_events_pending") == 0, what="the event to be published")
    assert metric(client, "curavani_events_published_total") == before + 1
    assert metric(client, "curavani_event_relay_leader") == 1


def test_events_tail_prints_what_arrives(patient_app, start_relay):
    client = patient_app.test_client()
    client.post("/api/patients", json={"vorname": "A", "nachname": "B", "email": "a.b@example.de",
                                       "geburtsdatum": "1980-01-01"}, headers=AUTH)
    start_relay(patient_app)

    result = patient_app.test_cli_runner().invoke(args=["events", "tail", "--from-beginning", "--count", "1",
                                                        "--timeout", "30"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["type"] == "de.curavani.patient.created"


def test_retention_removes_published_events_past_it_in_batches(patient_app, admin_engine, monkeypatch):
    from shared.events import relay as relay_module

    monkeypatch.setattr(relay_module, "RETENTION_BATCH", 3)
    client = patient_app.test_client()
    for n in range(8):
        client.post("/api/patients", json={"vorname": f"A{n}", "nachname": "B", "email": f"a{n}@example.de",
                                           "geburtsdatum": "1980-01-01"}, headers=AUTH)
    hours = patient_app.extensions["settings"].EVENTS_RETENTION_HOURS
    with admin_engine.begin() as conn:  # 7 published long ago, 1 published just now
        conn.execute(text("UPDATE patient_service.event_outbox SET published_at = now() - make_interval(hours => CAST(:h AS int))"
                          " WHERE id <= 7"), {"h": hours + 1})
        conn.execute(text("UPDATE patient_service.event_outbox SET published_at = now() WHERE id = 8"))

    with patient_app.app_context():
        removed = patient_app.extensions["relay"].remove_expired()

    assert removed == 7
    assert [row["id"] for row in outbox_rows(admin_engine, "patient_service")] == [8]


def test_without_a_broker_retention_removes_recorded_events(make_app, admin_engine):
    app = make_app("patient")  # EVENTS_KAFKA_BOOTSTRAP unset: nothing publishes, the outbox must not grow for ever
    client = app.test_client()
    for n in range(2):
        client.post("/api/patients", json={"vorname": f"A{n}", "nachname": "B", "email": f"a{n}@example.de",
                                           "geburtsdatum": "1980-01-01"}, headers=AUTH)
    with admin_engine.begin() as conn:
        conn.execute(text("UPDATE patient_service.event_outbox SET created_at = created_at - interval '200 hours'"
                          " WHERE id = 1"))

    with app.app_context():
        assert app.extensions["relay"].remove_expired() == 1

    assert [row["id"] for row in outbox_rows(admin_engine, "patient_service")] == [2]


def test_an_erasure_over_rest_publishes_patient_erased_after_its_versions(patient_app, start_relay, reader):
    client = patient_app.test_client()
    first, last, mail, born = PEOPLE[0]
    created = client.post("/api/patients", json={"vorname": first, "nachname": last, "email": mail,
                                                 "geburtsdatum": born}, headers=AUTH).get_json()
    client.patch(f"/api/patients/{created['id']}", json={"plz": "52062"}, headers=AUTH)
    erased = client.post(f"/api/patients/{created['id']}/erasure", json={"reason": "Art. 17 request"}, headers=AUTH)
    assert erased.status_code == 200, erased.get_json()
    start_relay(patient_app)

    received = reader.read("patient", 3)

    events = [message.event for message in received]
    assert [(e["type"], e["sequence"]) for e in events] == [
        ("de.curavani.patient.created", 1), ("de.curavani.patient.updated", 2), ("de.curavani.patient.erased", 3)]
    assert events[2]["data"] == {"id": created["id"], "version": 3, "changed": []}
    assert not [p for p in people_patterns() if any(p in m.value for m in received)]
