"""Participants are persons: their events (SPEC §9.2) carry only id, version and the names of
the changed fields, whatever the request held — checked on the bytes the broker delivers."""
from __future__ import annotations

import json

import jsonschema_rs
from conftest import AUTH, ROOT, SAMPLES

SCHEMA = json.loads((ROOT / "docs" / "events" / "events.schema.json").read_text())
DAY1 = json.loads((SAMPLES / "participants" / "batch-day1.json").read_text())
DAY2 = json.loads((SAMPLES / "participants" / "batch-day2.json").read_text())
PERSONAL_KEYS = ("firstName", "lastName", "email", "phone", "username")


def personal_values() -> set[bytes]:
    values = set()
    for body in (DAY1, DAY2):
        for person in body["participants"]:
            for key in PERSONAL_KEYS:
                if person.get(key):
                    values |= {person[key].encode(), person[key].strip().lower().encode()}
    return values


def test_participant_events_are_thin_and_carry_no_personal_data(therapist_events_app, start_relay, reader,
                                                                admin_engine):
    client = therapist_events_app.test_client()
    assert client.post("/api/appointments/participants", json=DAY1, headers=AUTH).status_code == 201
    assert client.post("/api/appointments/participants", json=DAY2, headers=AUTH).status_code == 204
    start_relay(therapist_events_app)

    received = reader.read("participant", 3)

    events = [message.event for message in received]
    assert [(e["subject"], e["type"], e["sequence"]) for e in events if e["subject"] == "temp-001"] == [
        ("temp-001", "de.curavani.participant.created", 1), ("temp-001", "de.curavani.participant.updated", 2)]
    assert [e["type"] for e in events if e["subject"] == "mid-5555"] == ["de.curavani.participant.created"]
    john_updated = events[-1] if events[-1]["subject"] == "temp-001" else events[-2]
    assert john_updated["data"]["id"] == "temp-001" and "mid" in john_updated["data"]["changed"]
    for message in received:
        everything = message.value + message.key + b"".join(message.headers.values())
        assert [value for value in personal_values() if value in everything] == []
        assert set(message.event["data"]) == {"id", "version", "changed"}
    validator = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)
    assert all(validator.is_valid(e) for e in events)
