"""The appointments REST API (SPEC §6.5) end to end: HTTP in, real PostgreSQL underneath."""
from __future__ import annotations

import uuid

import pytest
from conftest import AUTH
from helpers import assert_problem, at_param, instant_between_writes, pointers
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from .support import ORG, appointment, created, listed, post, sample_appointments, stored_rows, version_count

# ---- create and update -------------------------------------------------------------------------

def test_every_sample_appointment_is_created_with_location_etag_and_its_representation(therapist_client):
    for body in sample_appointments():
        response = post(therapist_client, body)

        assert response.status_code == 201, response.get_json()
        answer = response.get_json()
        assert answer["status"] == "ok" and answer["version"] == 1
        assert response.headers["Location"] == f"/api/appointments/{answer['id']}"
        assert response.headers["ETag"] == f'"{answer["id"]}.1"'

    [first] = [a for a in listed(therapist_client) if a["externalId"] == "apt-1001"]
    assert first == {"id": first["id"], "orgId": ORG, "externalId": "apt-1001",
                     "start": "2025-07-14T09:00:00.000Z", "end": "2025-07-14T09:50:00.000Z",
                     "payloadCreatedAt": "2025-07-01T08:12:40.000Z", "payloadUpdatedAt": "2025-07-01T08:12:40.000Z",
                     "version": 1}


def test_a_time_with_a_zone_is_stored_in_utc(therapist_client):
    apt_1003 = next(body for body in sample_appointments() if body["id"] == "apt-1003")
    appointment_id = created(therapist_client, apt_1003)

    read = therapist_client.get(f"/api/appointments/{appointment_id}", headers=AUTH).get_json()

    assert (read["start"], read["end"]) == ("2025-07-14T11:00:00.000Z", "2025-07-14T11:50:00.000Z")


def test_org_defaults_to_default(therapist_client):
    body = appointment()
    del body["orgId"]
    appointment_id = created(therapist_client, body)

    assert therapist_client.get(f"/api/appointments/{appointment_id}", headers=AUTH).get_json()["orgId"] == "default"
    assert [a["id"] for a in therapist_client.get("/api/appointments", headers=AUTH).get_json()] == [appointment_id]


def test_newer_updated_at_updates_in_place_with_200_and_a_new_version(therapist_client, admin_engine):
    appointment_id = created(therapist_client, appointment())

    response = post(therapist_client, appointment(start="2025-07-14 10:00", end="2025-07-14 10:50",
                                                  updated_at="2025-07-02 08:00:00"))

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "id": appointment_id, "version": 2}
    assert response.headers["ETag"] == f'"{appointment_id}.2"'
    [row] = stored_rows(admin_engine)
    assert row["start"].isoformat() == "2025-07-14T10:00:00+00:00" and row["version"] == 2
    assert version_count(admin_engine) == 2


@pytest.mark.parametrize("updated_at", ["2025-07-01 08:00:00", "2025-06-30 23:59:59"], ids=["equal", "older"])
def test_equal_or_older_updated_at_is_ignored_stale_and_writes_nothing(therapist_client, admin_engine, updated_at):
    created(therapist_client, appointment())
    before = stored_rows(admin_engine)

    response = post(therapist_client, appointment(start="2025-07-14 12:00", end="2025-07-14 13:00",
                                                  updated_at=updated_at))

    assert response.status_code == 200
    assert response.get_json() == {"status": "ignored-stale"}
    assert stored_rows(admin_engine) == before
    assert version_count(admin_engine) == 1


def test_stale_comes_before_overlap(therapist_client):
    created(therapist_client, appointment("a"))
    created(therapist_client, appointment("b", start="2025-07-14 10:00", end="2025-07-14 11:00"))

    # an old message of "b" that would overlap "a": ignored, not a conflict
    response = post(therapist_client, appointment("b", start="2025-07-14 09:00", end="2025-07-14 09:30",
                                                  updated_at="2025-06-01 00:00:00"))

    assert response.status_code == 200 and response.get_json() == {"status": "ignored-stale"}


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("end", ["2025-07-14 09:00", "2025-07-14 08:00"], ids=["equal", "before"])
def test_end_not_after_start_is_400_pointing_at_end(therapist_client, admin_engine, end):
    response = post(therapist_client, appointment(end=end))

    assert_problem(response, 400)  # the upstream calendar API's code (SPEC §6.5)
    assert pointers(response) == ["/end"]
    assert stored_rows(admin_engine) == []


@pytest.mark.parametrize("body, pointer", [
    ({"colour": "red"}, "/colour"),
    ({"id": ""}, "/id"),
    ({"id": "x" * 201}, "/id"),
    ({"orgId": "o" * 101}, "/orgId"),
    ({"start": "next monday"}, "/start"),
    ({"updatedAt": None}, "/updatedAt"),
])
def test_invalid_or_unknown_fields_are_400_naming_the_field(therapist_client, body, pointer):
    response = post(therapist_client, appointment(**body))

    assert_problem(response, 400)  # the upstream calendar API's code (SPEC §6.5)
    assert pointer in pointers(response)


@pytest.mark.parametrize("field", ["id", "start", "end", "updatedAt"])
def test_required_fields_are_400_when_missing(therapist_client, field):
    body = appointment()
    del body[field]

    response = post(therapist_client, body)

    assert_problem(response, 400)  # the upstream calendar API's code (SPEC §6.5)
    assert pointers(response) == [f"/{field}"]


def test_created_at_is_optional(therapist_client):
    body = appointment()
    del body["createdAt"]
    appointment_id = created(therapist_client, body)

    assert therapist_client.get(f"/api/appointments/{appointment_id}", headers=AUTH).get_json()[
        "payloadCreatedAt"] is None


# ---- no overlaps -------------------------------------------------------------------------------

def test_adjacent_appointments_do_not_overlap(therapist_client):
    created(therapist_client, appointment("a", start="2025-07-14 09:00", end="2025-07-14 09:50"))

    response = post(therapist_client, appointment("b", start="2025-07-14 09:50", end="2025-07-14 10:40"))

    assert response.status_code == 201


def test_the_same_time_in_another_organisation_is_allowed(therapist_client):
    created(therapist_client, appointment("apt-1001", org="praxis-67"))

    response = post(therapist_client, appointment("apt-1001", org="praxis-12"))

    assert response.status_code == 201
    assert len(listed(therapist_client)) == 1


@pytest.mark.parametrize("start, end", [
    ("2025-07-14 09:49", "2025-07-14 10:30"),  # overlaps the end
    ("2025-07-14 08:30", "2025-07-14 09:01"),  # overlaps the start
    ("2025-07-14 09:10", "2025-07-14 09:20"),  # inside
    ("2025-07-14 08:00", "2025-07-14 11:00"),  # around
])
def test_an_overlapping_create_is_409_overlap_naming_the_conflicting_appointment(
        therapist_client, admin_engine, start, end):
    holder = created(therapist_client, appointment("a"))

    response = post(therapist_client, appointment("b", start=start, end=end))

    body = assert_problem(response, 409)
    assert body["type"] == "overlap"
    assert body["conflicting_id"] == holder
    assert [row["external_id"] for row in stored_rows(admin_engine)] == ["a"]
    assert version_count(admin_engine) == 1


def test_an_overlap_logs_nothing_of_the_constraints_detail(therapist_client, caplog):
    """PostgreSQL's DETAIL of a 23P01 carries the rows' values: it never reaches a log."""
    created(therapist_client, appointment("a"))

    with caplog.at_level("DEBUG"):
        assert post(therapist_client, appointment("b", start="2025-07-14 09:30")).status_code == 409

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "conflicts with existing key" not in logged and "tstzrange" not in logged
    assert not [record for record in caplog.records if record.levelname in ("ERROR", "WARNING")]


def test_an_update_moving_onto_another_appointment_is_409_and_keeps_the_stored_one(therapist_client, admin_engine):
    holder = created(therapist_client, appointment("a"))
    created(therapist_client, appointment("b", start="2025-07-14 11:00", end="2025-07-14 12:00"))

    response = post(therapist_client, appointment("b", start="2025-07-14 09:30", end="2025-07-14 10:30",
                                                  updated_at="2025-07-05 00:00:00"))

    assert assert_problem(response, 409)["conflicting_id"] == holder
    moved = next(row for row in stored_rows(admin_engine) if row["external_id"] == "b")
    assert moved["start"].isoformat() == "2025-07-14T11:00:00+00:00" and moved["version"] == 1


def test_the_database_itself_refuses_an_overlap(migrated, admin_engine):
    """The rule lives in the exclusion constraint, not only in the service."""
    insert = text("INSERT INTO therapist_service.appointments (id, org_id, external_id, start, \"end\", "
                  "payload_updated_at, version, created_at, updated_at) VALUES (:id, 'o', :ext, "
                  "'2025-07-14 09:00+00', '2025-07-14 10:00+00', now(), 1, now(), now())")
    with admin_engine.begin() as conn:
        conn.execute(insert, {"id": uuid.uuid4(), "ext": "a"})
    with pytest.raises(IntegrityError) as raised, admin_engine.begin() as conn:
        conn.execute(insert, {"id": uuid.uuid4(), "ext": "b"})
    assert raised.value.orig.pgcode == "23P01"


# ---- cancel ------------------------------------------------------------------------------------

def test_cancel_frees_the_slot_and_reads_give_410(therapist_client, admin_engine):
    cancelled = created(therapist_client, appointment("a"))

    response = therapist_client.delete(f"/api/appointments/{cancelled}", headers=AUTH)

    assert response.status_code == 204
    assert_problem(therapist_client.get(f"/api/appointments/{cancelled}", headers=AUTH), 410)
    assert listed(therapist_client) == []
    assert post(therapist_client, appointment("b")).status_code == 201
    assert assert_problem(therapist_client.delete(f"/api/appointments/{cancelled}", headers=AUTH), 410)


def test_cancel_honours_if_match(therapist_client):
    appointment_id = created(therapist_client, appointment())
    etag = therapist_client.get(f"/api/appointments/{appointment_id}", headers=AUTH).headers["ETag"]
    post(therapist_client, appointment(updated_at="2025-07-02 00:00:00"))  # now at version 2

    refused = therapist_client.delete(f"/api/appointments/{appointment_id}", headers={**AUTH, "If-Match": etag})
    assert_problem(refused, 412)

    current = therapist_client.get(f"/api/appointments/{appointment_id}", headers=AUTH).headers["ETag"]
    assert current == f'"{appointment_id}.2"'
    accepted = therapist_client.delete(f"/api/appointments/{appointment_id}", headers={**AUTH, "If-Match": current})
    assert accepted.status_code == 204


def test_a_newer_calendar_write_brings_a_cancelled_appointment_back(therapist_client):
    appointment_id = created(therapist_client, appointment())
    therapist_client.delete(f"/api/appointments/{appointment_id}", headers=AUTH)

    assert post(therapist_client, appointment(updated_at="2025-07-01 08:00:00")).get_json() == {
        "status": "ignored-stale"}
    revived = post(therapist_client, appointment(updated_at="2025-07-03 00:00:00"))

    assert revived.status_code == 200
    assert revived.get_json() == {"status": "ok", "id": appointment_id, "version": 3}
    assert [a["id"] for a in listed(therapist_client)] == [appointment_id]


def test_unknown_appointment_is_404(therapist_client):
    missing = uuid.uuid4()
    assert_problem(therapist_client.get(f"/api/appointments/{missing}", headers=AUTH), 404)
    assert_problem(therapist_client.delete(f"/api/appointments/{missing}", headers=AUTH), 404)
    assert_problem(therapist_client.get(f"/api/appointments/{missing}/history", headers=AUTH), 404)


def test_appointments_need_a_token(therapist_client):
    response = therapist_client.post("/api/appointments", json=appointment())

    assert_problem(response, 401)


# ---- history and time travel -------------------------------------------------------------------

def test_history_lists_every_version_newest_first_with_source_and_actor(therapist_client):
    appointment_id = created(therapist_client, appointment())
    post(therapist_client, appointment(start="2025-07-14 10:00", end="2025-07-14 10:50", updated_at="2025-07-02"))
    therapist_client.delete(f"/api/appointments/{appointment_id}", headers=AUTH)

    history = therapist_client.get(f"/api/appointments/{appointment_id}/history", headers=AUTH).get_json()

    assert [entry["version"] for entry in history] == [3, 2, 1]
    assert {(entry["source"], entry["actor"]) for entry in history} == {("api", "tests")}
    assert history[1]["data"]["start"] == "2025-07-14T10:00:00.000Z"
    assert history[2]["data"]["start"] == "2025-07-14T09:00:00.000Z"


def test_at_reads_one_appointment_as_it_was(therapist_client):
    before_creation = instant_between_writes()
    appointment_id = created(therapist_client, appointment())
    after_creation = instant_between_writes()
    post(therapist_client, appointment(start="2025-07-14 10:00", end="2025-07-14 10:50", updated_at="2025-07-02"))
    after_move = instant_between_writes()
    therapist_client.delete(f"/api/appointments/{appointment_id}", headers=AUTH)

    def at(moment):
        return therapist_client.get(f"/api/appointments/{appointment_id}?at={at_param(moment)}", headers=AUTH)

    assert_problem(at(before_creation), 404)
    first = at(after_creation)
    assert first.status_code == 200 and first.get_json()["start"] == "2025-07-14T09:00:00.000Z"
    assert first.headers["ETag"] == f'"{appointment_id}.1"'
    assert at(after_move).get_json()["start"] == "2025-07-14T10:00:00.000Z"
    assert_problem(at(instant_between_writes()), 410)


def test_at_reads_an_organisations_calendar_as_it_was(therapist_client):
    first = created(therapist_client, appointment("a"))
    moved = created(therapist_client, appointment("b", start="2025-07-14 11:00", end="2025-07-14 12:00"))
    created(therapist_client, appointment("other-org", org="praxis-12"))
    before_changes = instant_between_writes()
    post(therapist_client, appointment("b", start="2025-07-14 08:00", end="2025-07-14 08:30", updated_at="2025-07-09"))
    therapist_client.delete(f"/api/appointments/{first}", headers=AUTH)
    added = created(therapist_client, appointment("c", start="2025-07-14 13:00", end="2025-07-14 14:00"))

    then = listed(therapist_client, f"&at={at_param(before_changes)}")
    now = listed(therapist_client)

    assert [(a["id"], a["start"]) for a in then] == [(first, "2025-07-14T09:00:00.000Z"),
                                                     (moved, "2025-07-14T11:00:00.000Z")]
    assert [(a["id"], a["start"]) for a in now] == [(moved, "2025-07-14T08:00:00.000Z"),
                                                    (added, "2025-07-14T13:00:00.000Z")]


@pytest.mark.parametrize("as_of", [False, True], ids=["now", "at"])
def test_from_and_to_keep_appointments_overlapping_the_window(therapist_client, as_of):
    for name, start, end in [("early", "08:00", "09:00"), ("mid", "09:00", "10:00"), ("late", "10:00", "11:00")]:
        created(therapist_client, appointment(name, start=f"2025-07-14 {start}", end=f"2025-07-14 {end}"))
    at = f"&at={at_param(instant_between_writes())}" if as_of else ""

    window = listed(therapist_client, f"&from=2025-07-14T09:00:00Z&to=2025-07-14T10:00:00Z{at}")

    assert [a["externalId"] for a in window] == ["mid"]  # half-open: "early" ends, "late" starts at the edges


def test_the_list_is_paginated(therapist_client):
    for hour in range(10, 15):
        created(therapist_client, appointment(f"h{hour}", start=f"2025-07-14 {hour}:00", end=f"2025-07-14 {hour}:30"))

    response = therapist_client.get(f"/api/appointments?org={ORG}&page=2&page_size=2", headers=AUTH)

    assert [a["externalId"] for a in response.get_json()] == ["h12", "h13"]
    assert response.headers["X-Pagination"] == '{"total": 5, "page": 2, "page_size": 2, "total_pages": 3}'
