"""`POST /api/appointments/batch` (SPEC §6.5) through the shared batch machinery: per-item
actions, modes, dry runs, idempotency keys, and overlaps with stored appointments and between
items of the same batch."""
from __future__ import annotations

from conftest import AUTH
from sqlalchemy import text

from .support import appointment, created, listed, stored_rows, version_count

BATCH = "/api/appointments/batch"


def send(client, items, headers=AUTH, **options):
    return client.post(BATCH, json={"items": items, **options}, headers=headers)


def results(response) -> list[tuple[str, str | None]]:
    return [(r["action"], r["id"]) for r in response.get_json()["results"]]


def test_per_item_actions_created_updated_and_ignored_stale(therapist_client, admin_engine):
    kept = created(therapist_client, appointment("kept"))
    moved = created(therapist_client, appointment("moved", start="2025-07-14 10:00", end="2025-07-14 11:00"))

    response = send(therapist_client, [
        appointment("new", start="2025-07-14 12:00", end="2025-07-14 13:00"),
        appointment("moved", start="2025-07-14 14:00", end="2025-07-14 15:00", updated_at="2025-07-02"),
        appointment("kept", start="2025-07-14 16:00", end="2025-07-14 17:00"),  # same updatedAt: stale
        appointment("new", start="2025-07-14 18:00", end="2025-07-14 19:00"),  # again, same updatedAt: stale
    ])

    assert response.status_code == 201
    body = response.get_json()
    new = body["results"][0]["id"]
    assert results(response) == [("created", new), ("updated", moved), ("ignored_stale", kept), ("ignored_stale", new)]
    assert body["summary"] == {"created": 1, "updated": 1, "unchanged": 0, "ignored_stale": 2, "deleted": 0,
                               "error": 0, "total": 4}
    assert [(a["externalId"], a["start"]) for a in listed(therapist_client)] == [
        ("kept", "2025-07-14T09:00:00.000Z"), ("new", "2025-07-14T12:00:00.000Z"),
        ("moved", "2025-07-14T14:00:00.000Z")]


def test_the_same_appointment_twice_in_one_batch_ends_at_the_newer_write(therapist_client):
    response = send(therapist_client, [appointment("twice", updated_at="2025-07-01"),
                                       appointment("twice", start="2025-07-14 10:00", end="2025-07-14 11:00",
                                                   updated_at="2025-07-02")])

    [(first, appointment_id), (second, same_id)] = results(response)
    assert (first, second) == ("created", "updated") and appointment_id == same_id
    read = therapist_client.get(f"/api/appointments/{appointment_id}", headers=AUTH).get_json()
    assert read["version"] == 2 and read["start"] == "2025-07-14T10:00:00.000Z"


def test_batch_versions_say_source_batch_and_the_token(therapist_client):
    response = send(therapist_client, [appointment("a")])
    [(_, appointment_id)] = results(response)

    history = therapist_client.get(f"/api/appointments/{appointment_id}/history", headers=AUTH).get_json()

    assert [(entry["source"], entry["actor"]) for entry in history] == [("batch", "tests")]


def test_transaction_mode_with_an_overlap_gives_422_naming_it_and_writes_nothing(therapist_client, admin_engine):
    holder = created(therapist_client, appointment("holder"))

    response = send(therapist_client, [appointment("fine", start="2025-07-14 12:00", end="2025-07-14 13:00"),
                                       appointment("clash", start="2025-07-14 09:30", end="2025-07-14 10:30")])

    assert response.status_code == 422
    [error] = response.get_json()["errors"]
    assert error["pointer"] == "/items/1" and error["index"] == 1
    assert error["type"] == "overlap" and error["conflicting_id"] == holder
    assert [row["external_id"] for row in stored_rows(admin_engine)] == ["holder"]
    assert version_count(admin_engine) == 1


def test_batch_mode_writes_the_others_and_reports_the_overlap(therapist_client, admin_engine):
    holder = created(therapist_client, appointment("holder"))

    response = send(therapist_client, [appointment("fine", start="2025-07-14 12:00", end="2025-07-14 13:00"),
                                       appointment("clash", start="2025-07-14 09:30", end="2025-07-14 10:30")],
                    mode="batch")

    assert response.status_code == 201
    fine, clash = response.get_json()["results"]
    assert fine["action"] == "created"
    assert clash["action"] == "error" and clash["id"] is None
    assert clash["errors"][0]["type"] == "overlap" and clash["errors"][0]["conflicting_id"] == holder
    assert sorted(row["external_id"] for row in stored_rows(admin_engine)) == ["fine", "holder"]


def test_an_overlap_between_items_names_the_earlier_items_appointment(therapist_client, admin_engine):
    response = send(therapist_client, [appointment("first"),
                                       appointment("second", start="2025-07-14 09:30", end="2025-07-14 10:30"),
                                       appointment("third", start="2025-07-14 10:30", end="2025-07-14 11:00")],
                    mode="batch")

    first, second, third = response.get_json()["results"]
    assert first["action"] == "created" and third["action"] == "created"
    assert second["action"] == "error"
    assert second["errors"][0]["type"] == "overlap" and second["errors"][0]["conflicting_id"] == first["id"]
    assert sorted(row["external_id"] for row in stored_rows(admin_engine)) == ["first", "third"]


def test_an_item_may_take_the_time_an_earlier_item_freed(therapist_client):
    created(therapist_client, appointment("x", start="2025-07-14 09:00", end="2025-07-14 10:00"))
    created(therapist_client, appointment("y", start="2025-07-14 11:00", end="2025-07-14 12:00"))

    # x moves to 13:00 first, then y takes x's old hour; then z takes y's old hour
    response = send(therapist_client, [
        appointment("x", start="2025-07-14 13:00", end="2025-07-14 14:00", updated_at="2025-07-02"),
        appointment("y", start="2025-07-14 09:00", end="2025-07-14 10:00", updated_at="2025-07-02"),
        appointment("z", start="2025-07-14 11:00", end="2025-07-14 12:00")])

    assert [action for action, _ in results(response)] == ["updated", "updated", "created"]
    assert [(a["externalId"], a["start"][11:16]) for a in listed(therapist_client)] == [
        ("y", "09:00"), ("z", "11:00"), ("x", "13:00")]


def test_invalid_items_are_errors_naming_the_field_and_deletes_are_not_offered(therapist_client, admin_engine):
    response = send(therapist_client, [appointment("ok"),
                                       appointment("bad", end="2025-07-14 08:00"),
                                       {"op": "delete", "id": 1}], mode="batch")

    ok, bad, delete = response.get_json()["results"]
    assert ok["action"] == "created"
    assert [(e["pointer"], e["type"]) for e in bad["errors"]] == [("/end", "validation-error")]
    assert "/op" in [e["pointer"] for e in delete["errors"]]
    assert [row["external_id"] for row in stored_rows(admin_engine)] == ["ok"]


def test_dry_run_answers_as_if_written_and_writes_nothing(therapist_client, admin_engine):
    holder = created(therapist_client, appointment("holder"))

    response = send(therapist_client, [appointment("new", start="2025-07-14 12:00", end="2025-07-14 13:00"),
                                       appointment("clash", start="2025-07-14 09:30", end="2025-07-14 10:30")],
                    mode="batch", dry_run=True)

    body = response.get_json()
    assert body["dry_run"] is True
    assert results(response)[0] == ("created", None)
    assert body["results"][1]["errors"][0]["conflicting_id"] == holder
    assert [row["external_id"] for row in stored_rows(admin_engine)] == ["holder"]
    assert version_count(admin_engine) == 1


def test_the_same_idempotency_key_replays_the_answer_without_writing_again(therapist_client, admin_engine):
    items = [appointment("a"), appointment("b", start="2025-07-14 10:00", end="2025-07-14 11:00")]
    headers = {**AUTH, "Idempotency-Key": "calendar-push-1"}

    first = send(therapist_client, items, headers=headers)
    again = send(therapist_client, items, headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert version_count(admin_engine) == 2
    stored = therapist_client.get("/api/batches/calendar-push-1", headers=AUTH).get_json()
    assert stored["response"] == first.get_json()


def test_return_minimal_gives_201_without_a_body(therapist_client, admin_engine):
    response = send(therapist_client, [appointment("a")], headers={**AUTH, "Prefer": "return=minimal"})

    assert response.status_code == 201 and response.data == b""
    assert response.headers["Preference-Applied"] == "return=minimal"
    with admin_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM therapist_service.appointments")) == 1


def test_every_appointment_version_has_its_event_in_the_outbox(therapist_client, admin_engine):
    """Single writes and the batch's bulk path alike write versions through shared.versioning."""
    single = created(therapist_client, appointment("single"))
    therapist_client.delete(f"/api/appointments/{single}", headers=AUTH)
    send(therapist_client, [appointment("a", start="2025-07-14 12:00", end="2025-07-14 13:00"),
                            appointment("a", start="2025-07-14 13:00", end="2025-07-14 14:00", updated_at="2025-07-02"),
                            appointment("b", start="2025-07-14 15:00", end="2025-07-14 16:00")])

    with admin_engine.connect() as conn:
        versions = set(conn.execute(text("SELECT record_id::text, version FROM therapist_service.appointment_versions")))
        events = set(conn.execute(text("SELECT record_id, sequence FROM therapist_service.event_outbox "
                                       "WHERE aggregate = 'appointment'")))
    assert len(versions) == 5
    assert events == versions
