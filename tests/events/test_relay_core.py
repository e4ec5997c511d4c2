"""The core path: a REST write records its event in the outbox in the same transaction, the
relay publishes it to a real broker, and a real consumer reads it."""
from __future__ import annotations

from conftest import AUTH
from helpers import wait_until

from .support import outbox_rows


def patient_body(**overrides):
    body = {"vorname": "Erika", "nachname": "Musterfrau", "geburtsdatum": "1984-03-09",
            "email": "erika.musterfrau@example.de", "plz": "52062", "ort": "Aachen"}
    body.update(overrides)
    return body


def test_patient_written_over_rest_arrives_on_the_patient_topic(patient_events_app, start_relay, reader,
                                                                 admin_engine):
    client = patient_events_app.test_client()
    created = client.post("/api/patients", json=patient_body(), headers=AUTH).get_json()
    client.patch(f"/api/patients/{created['id']}", json={"ort": "Köln"}, headers=AUTH)
    client.delete(f"/api/patients/{created['id']}", headers=AUTH)
    start_relay(patient_events_app)

    received = reader.read("patient", 3)

    events = [message.event for message in received]
    assert [e["type"] for e in events] == ["de.curavani.patient.created", "de.curavani.patient.updated",
                                           "de.curavani.patient.deleted"]
    assert [e["sequence"] for e in events] == [1, 2, 3]
    assert {message.key for message in received} == {str(created["id"]).encode()}
    assert events[1]["data"] == {"id": created["id"], "version": 2, "changed": ["ort"]}
    assert events[2]["data"] == {"id": created["id"], "version": 3, "changed": []}  # nothing but the deletion
    wait_until(lambda: all(row["published_at"] for row in outbox_rows(admin_engine, "patient_service")),
               what="the outbox rows to be marked published")


def test_each_records_events_arrive_in_version_order_across_batches(patient_events_app, start_relay, reader,
                                                                      monkeypatch):
    from shared.events import relay

    monkeypatch.setattr(relay, "BATCH_SIZE", 7)  # batches cut through every record's run of events
    client = patient_events_app.test_client()
    ids = [client.post("/api/patients", json=patient_body(email=f"p{n}@example.de"), headers=AUTH).get_json()["id"]
           for n in range(10)]
    for round_number in range(4):  # interleaved: record after record, round after round
        for patient_id in ids:
            client.patch(f"/api/patients/{patient_id}", json={"ort": f"Ort {round_number}"}, headers=AUTH)
    start_relay(patient_events_app)

    received = reader.read("patient", 50)

    sequences: dict[str, list[int]] = {}
    for message in received:
        sequences.setdefault(message.key.decode(), []).append(message.event["sequence"])
    assert sequences == {str(patient_id): [1, 2, 3, 4, 5] for patient_id in ids}
