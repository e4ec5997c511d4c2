"""Concurrent writers against the real database, on real threads (SPEC §6.5): one slot for many
creates, one appointment written in shuffled `updatedAt` order, and batches crossing organisations."""
from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from conftest import AUTH
from sqlalchemy import text

from shared.extensions import db
from therapist_service.appointments import services
from therapist_service.appointments.schemas import AppointmentWriteSchema

from .support import ORG, appointment, stored_rows

DAY = datetime(2025, 7, 14, 9, 0, tzinfo=UTC)


def wire(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def post_together(app, paths_and_bodies: list[tuple[str, dict]]) -> list:
    """Every request from its own thread and client, all released at once; the responses in order."""
    start = threading.Barrier(len(paths_and_bodies))

    def send(path_and_body):
        path, body = path_and_body
        client = app.test_client()
        start.wait()
        response = client.post(path, json=body, headers=AUTH)
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(max_workers=len(paths_and_bodies)) as pool:
        return list(pool.map(send, paths_and_bodies))


def test_fifty_overlapping_creates_store_exactly_one_and_the_rest_get_409(therapist_app, admin_engine):
    # 50 appointments of one practice, each starting a minute later, all overlapping the first hour
    bodies = [("/api/appointments", appointment(f"race-{n}", start=wire(DAY + timedelta(minutes=n)),
                                                end=wire(DAY + timedelta(minutes=n + 60))))
              for n in range(50)]

    answers = post_together(therapist_app, bodies)

    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 1, 409: 49}, statuses
    [winner] = [body["id"] for status, body in answers if status == 201]
    assert {body["type"] for status, body in answers if status == 409} == {"overlap"}
    assert {body["conflicting_id"] for status, body in answers if status == 409} == {winner}
    assert [str(row["id"]) for row in stored_rows(admin_engine)] == [winner]


def test_twenty_writes_of_one_appointment_in_shuffled_order_end_with_the_highest_updated_at(
        therapist_app, admin_engine):
    # write n moves the appointment to 09:n and is stamped n hours after a base time
    base = datetime(2025, 7, 1, tzinfo=UTC)
    writes = [appointment("moving", start=wire(DAY + timedelta(minutes=n)), end=wire(DAY + timedelta(minutes=n + 30)),
                          updated_at=wire(base + timedelta(hours=n))) for n in range(20)]
    random.Random(20).shuffle(writes)

    answers = post_together(therapist_app, [("/api/appointments", body) for body in writes])

    assert all(status in (200, 201) for status, _ in answers), answers
    assert sum(1 for status, _ in answers if status == 201) == 1
    [row] = stored_rows(admin_engine)
    assert row["payload_updated_at"] == base + timedelta(hours=19)
    assert row["start"] == DAY + timedelta(minutes=19)
    applied = [body for status, body in answers if body["status"] == "ok"]
    assert row["version"] == len(applied)  # each applied write is one version; the stale ones none
    history = therapist_app.test_client().get(f"/api/appointments/{row['id']}/history", headers=AUTH).get_json()
    stamps = [entry["data"]["payloadUpdatedAt"] for entry in reversed(history)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # only ever newer


def test_batches_crossing_organisations_in_opposite_orders_all_answer_without_error(therapist_app, admin_engine):
    """Each batch holds one slot in each of two practices, half of them naming the practices in
    the other order; all but the first meet overlaps and are redone item by item, each item
    answered `error` (an overlap), never the whole request a 5xx (a deadlock would be one)."""
    batches = []
    for n in range(12):
        items = [appointment(f"b{n}-{org}", org=org, start=wire(DAY + timedelta(minutes=n)),
                             end=wire(DAY + timedelta(minutes=n + 60))) for org in ("praxis-a", "praxis-b")]
        batches.append(("/api/appointments/batch", {"items": items[::-1] if n % 2 else items, "mode": "batch"}))

    answers = post_together(therapist_app, batches)

    assert {status for status, _ in answers} <= {200, 201}, [a for a in answers if a[0] >= 300]
    actions = Counter(result["action"] for _, body in answers for result in body["results"])
    assert actions == {"created": 2, "error": 22}, actions
    assert sorted(row["org_id"] for row in stored_rows(admin_engine)) == ["praxis-a", "praxis-b"]
    assert ORG not in {row["org_id"] for row in stored_rows(admin_engine)}


def test_a_batch_redone_item_by_item_takes_all_its_practices_locks_at_its_first_item(therapist_app, admin_engine):
    """The fast path's savepoint let go of the locks; the first single write takes them all again
    (sorted), so the redo never holds one practice while waiting for another's lock."""
    items = [AppointmentWriteSchema().load(appointment(f"x-{org}", org=org)) for org in ("praxis-a", "praxis-b")]

    def locks_held_by(pid):
        with admin_engine.connect() as conn:
            return conn.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                    "AND classid = :namespace AND pid = :pid"),
                               {"namespace": services.LOCK_NAMESPACE, "pid": pid})

    with therapist_app.app_context():
        pid = db.session.scalar(text("SELECT pg_backend_pid()"))
        fast_path = db.session.begin_nested()
        services.prepare_batch(items)
        assert locks_held_by(pid) == 2
        fast_path.rollback()  # as when the batch's one flush meets an overlap
        assert locks_held_by(pid) == 0

        services.upsert_appointment(items[1], source="batch", actor="tests")  # the redo's first item

        assert locks_held_by(pid) == 2
        db.session.rollback()
