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
