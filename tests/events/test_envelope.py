"""Events are serialised from one envelope per kind, origin and credential (`outbox._envelope`, kept
across writes): each must be byte for byte what `json.dumps` makes of `cloud_event`, whatever its
time, and survive COPY's text format intact."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from shared.bulk import JsonText, copy_lines
from shared.events import outbox
from shared.events.cloudevents import cloud_event
from shared.extensions import db

AWKWARD = 'quote " backslash \\ tab \t newline \n return \r ß € 🙂'
TIME = datetime(2026, 11, 29, 23, 5, 7, 123456, tzinfo=UTC)


def test_an_envelope_event_is_what_json_dumps_makes_of_the_cloud_event():
    envelope = outbox._envelope("therapist_service", "therapist", "updated", "import", AWKWARD)
    data = {"id": 7, "name": AWKWARD, "nested": {"list": [1, None, True]}, "when": TIME}
    for given in (data, JsonText(json.dumps(data, ensure_ascii=False, default=str))):
        event = envelope.event("e1b3c7a4-0c1d-4d2e-9f00-123456789abc", AWKWARD, 3, TIME, given)
        expected = cloud_event(event_id=event.event_id, service="therapist_service", aggregate="therapist",
                               kind="updated", subject=AWKWARD, sequence=3, origin="import", actor=AWKWARD,
                               time=TIME, data=data)
        assert event.document == json.dumps(expected, ensure_ascii=False, default=str)
        assert (event.type, event.record_id, event.sequence) == ("de.curavani.therapist.updated", AWKWARD, 3)


def test_a_kept_envelope_serves_events_of_other_times():
    envelope = outbox._envelope("therapist_service", "therapist", "updated", "api", "calendar")
    for time in (TIME, datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)):
        event = envelope.event("e1b3c7a4-0c1d-4d2e-9f00-123456789abc", 7, 2, time, {"id": 7})
        assert json.loads(event.document)["time"] == time.isoformat()
    assert outbox._envelope("therapist_service", "therapist", "updated", "api", "calendar") is envelope


def test_events_copied_in_bulk_read_back_as_they_were_serialised(therapist_app):
    envelope = outbox._envelope("therapist_service", "therapist", "created", "import", AWKWARD)
    events = [envelope.event(event_id, f"{AWKWARD} {number}", 1, TIME, {"note": AWKWARD * number})
              for number, event_id in enumerate(outbox.event_ids(3))]
    with therapist_app.app_context():
        table = outbox.event_models("therapist_service").outbox_table
        copy_lines(table, outbox._EVENT_COLUMNS, (event.copy_line() for event in events))
        stored = db.session.execute(text(f"SELECT event_id, record_id, document FROM {table.fullname} ORDER BY id")).all()
        db.session.rollback()
    assert [tuple(row) for row in stored] == [(e.event_id, e.record_id, e.document) for e in events]
    assert json.loads(stored[2].document)["data"] == {"note": AWKWARD * 2}


def test_event_ids_are_distinct_random_uuids_in_their_canonical_text():
    ids = outbox.event_ids(2000)
    assert len(set(ids)) == 2000
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert (str(parsed), parsed.version, parsed.variant) == (event_id, 4, uuid.RFC_4122)
    assert outbox.event_ids(0) == []
