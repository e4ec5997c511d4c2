"""Appointments get their events from the shared version hook like every record (SPEC §9):
REST and batch writes publish `de.curavani.appointment.*` with the representation after the
change; a stale write publishes nothing."""
from __future__ import annotations

import json

import jsonschema_rs
from conftest import AUTH, ROOT

from .support import outbox_events

SCHEMA = json.loads((ROOT / "docs" / "events" / "events.schema.json").read_text())


def appointment(external_id: str, start: str, end: str, updated: str, org: str = "praxis-67"):
    return {"id": external_id, "start": start, "end": end, "updatedAt": updated, "orgId": org}


def test_appointment_events_from_rest_and_batch_carry_the_representation(therapist_events_app, start_relay,
                                                                        reader, admin_engine):
    client = therapist_events_app.test_client()
    created = client.post("/api/appointments", json=appointment("apt-1", "2026-01-05 09:00", "2026-01-05 09:50",
                                                                "2026-01-01 10:00"), headers=AUTH)
    assert created.status_code == 201, created.get_json()
    uuid = created.get_json()["id"]
    moved = client.post("/api/appointments", json=appointment("apt-1", "2026-01-05 10:00", "2026-01-05 10:50",
                                                              "2026-01-02 10:00"), headers=AUTH)
    stale = client.post("/api/appointments", json=appointment("apt-1", "2026-01-05 11:00", "2026-01-05 11:50",
                                                              "2026-01-01 09:00"), headers=AUTH)
    assert (moved.status_code, stale.get_json()["status"]) == (200, "ignored-stale")
    assert client.delete(f"/api/appointments/{uuid}", headers=AUTH).status_code in (200, 204)
    batch = client.post("/api/appointments/batch", json={"items": [
        appointment("apt-2", "2026-01-06 09:00", "2026-01-06 09:50", "2026-01-01 10:00")]}, headers=AUTH)
    assert batch.status_code in (200, 201), batch.get_json()
    start_relay(therapist_events_app)

    received = reader.read("appointment", 4)

    events = [message.event for message in received]
    assert [(e["type"], e["origin"]) for e in events if e["subject"] == uuid] == [
        ("de.curavani.appointment.created", "api"), ("de.curavani.appointment.updated", "api"),
        ("de.curavani.appointment.deleted", "api")]
    assert [e["type"] for e in events if e["subject"] != uuid] == ["de.curavani.appointment.created"]
    assert [e["origin"] for e in events if e["subject"] != uuid] == ["batch"]
    history = {row["version"]: row["data"] for row in
               client.get(f"/api/appointments/{uuid}/history", headers=AUTH).get_json()}
    assert all(e["data"] == history[e["sequence"]] for e in events if e["subject"] == uuid)
    validator = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)
    assert all(validator.is_valid(e) for e in events)
    assert len(outbox_events(admin_engine, "therapist_service")) == 4  # nothing for the stale write
