"""The two routes whose wire format is an upstream specification's (SPEC §5, §6.5, §6.6) answer
as those specifications say, so that clients written against them work unchanged: 400 for every
body that fails validation (same problem body, same pointers as elsewhere), `{"status": "ok" |
"ignored-stale"}` and 409 on overlap for the calendar, 201 / 204 for participants. Every other
route keeps 422 for a body that fails validation."""
from __future__ import annotations

import pytest
from appointments.support import appointment, post
from conftest import AUTH
from helpers import assert_problem, pointers
from participants.support import PATH as PARTICIPANTS
from participants.support import person

APPOINTMENTS = "/api/appointments"


def without(body: dict, field: str) -> dict:
    return {k: v for k, v in body.items() if k != field}


# ---- POST /api/appointments: "400 Bad Request — invalid data format or validation errors" --------

@pytest.mark.parametrize("body, pointer", [
    (appointment(end="2025-07-14 08:00"), "/end"),                      # end before start
    (appointment(end="2025-07-14 09:00"), "/end"),                      # end equal to start
    (without(appointment(), "updatedAt"), "/updatedAt"),
    (appointment(start="tomorrow"), "/start"),
    (appointment(colour="red"), "/colour"),                             # an unknown field
    (appointment(id=""), "/id"),
    (appointment(orgId="o" * 101), "/orgId"),
], ids=["end-before-start", "end-equals-start", "no-updatedAt", "start-tomorrow", "unknown-field", "empty-id",
        "long-orgId"])
def test_an_appointment_that_fails_validation_is_400_with_the_pointer(therapist_client, body, pointer):
    response = post(therapist_client, body)
    problem = assert_problem(response, 400)
    assert problem["type"] == "validation-error" and pointer in pointers(response)


def test_an_appointment_body_that_is_not_json_stays_400(therapist_client):
    response = therapist_client.post(APPOINTMENTS, data="{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert assert_problem(response, 400)["detail"] == "the request body is not valid JSON"


def test_the_calendar_api_answers_as_its_specification_says(therapist_client):
    created = post(therapist_client, appointment("apt-1001"))
    assert created.status_code == 201 and created.get_json()["status"] == "ok" and "Location" in created.headers
    updated = post(therapist_client, appointment("apt-1001", updated_at="2025-07-02 08:00:00"))
    assert updated.status_code == 200 and updated.get_json()["status"] == "ok"
    stale = post(therapist_client, appointment("apt-1001", updated_at="2025-07-02 08:00:00"))
    assert (stale.status_code, stale.get_json()) == (200, {"status": "ignored-stale"})
    overlap = post(therapist_client, appointment("apt-1002", start="2025-07-14 09:30", end="2025-07-14 10:00"))
    problem = assert_problem(overlap, 409)
    assert problem["type"] == "overlap" and problem["conflicting_id"] == created.get_json()["id"]


# ---- POST /api/appointments/participants: "400 — the participants array is empty, or an item is
# missing participantId" ------------------------------------------------------------------------

@pytest.mark.parametrize("body, pointer", [
    ({"participants": []}, "/participants"),
    ({"batchId": "b-1"}, "/participants"),
    ({"participants": [without(person(1), "participantId")]}, "/participants/0/participantId"),
    ({"participants": [person(1), {**person(2), "mid": "MID-1", "MID": "MID-2"}]}, "/participants/1/MID"),
    ({"participants": [person(1, nickname="J")]}, "/participants/0/nickname"),   # an unknown field
    ({"participants": [person(1)], "colour": "red"}, "/colour"),
    ({"participants": [person(1, email="not-an-address")]}, "/participants/0/email"),
], ids=["empty", "missing", "no-participantId", "mid-MID-conflict", "unknown-item-field", "unknown-field",
        "bad-email"])
def test_a_participants_body_that_fails_validation_is_400_with_the_pointer(therapist_client, body, pointer):
    response = therapist_client.post(PARTICIPANTS, json=body, headers=AUTH)
    problem = assert_problem(response, 400)
    assert problem["type"] == "validation-error" and pointer in pointers(response), problem


def test_more_participants_than_allowed_is_400(make_app):
    client = make_app("therapist", BATCH_MAX_ITEMS=2).test_client()
    response = client.post(PARTICIPANTS, json={"participants": [person(1), person(2), person(3)]}, headers=AUTH)
    assert pointers(response) == ["/participants"] and assert_problem(response, 400)


def test_a_participants_body_that_is_not_json_stays_400(therapist_client):
    response = therapist_client.post(PARTICIPANTS, data="[", headers={**AUTH, "Content-Type": "application/json"})
    assert assert_problem(response, 400)["detail"] == "the request body is not valid JSON"


def test_an_idempotency_key_reused_with_another_body_keeps_its_own_code(therapist_client):
    headers = {**AUTH, "Idempotency-Key": "upstream-1"}
    assert therapist_client.post(PARTICIPANTS, json={"participants": [person(1)]}, headers=headers).status_code == 201
    reused = therapist_client.post(PARTICIPANTS, json={"participants": [person(2)]}, headers=headers)
    assert assert_problem(reused, 422)["type"] == "idempotency-key-reused"


def test_the_participants_api_answers_as_its_specification_says(therapist_client):
    created = therapist_client.post(PARTICIPANTS, json={"participants": [person(1)]}, headers=AUTH)
    assert (created.status_code, created.get_data()) == (201, b"")
    again = therapist_client.post(PARTICIPANTS, json={"participants": [person(1, phone="0241 9")]}, headers=AUTH)
    assert (again.status_code, again.get_data()) == (204, b"")


# ---- everywhere else: 422 -----------------------------------------------------------------------

@pytest.mark.parametrize("service, path, body", [
    ("therapist", "/api/appointments/batch", {"items": [appointment(end="2025-07-14 08:00")], "mode": "transaction"}),
    ("therapist", "/api/appointments/batch", {"items": []}),
    ("therapist", "/api/therapists", {"basic_info": {"first_name": "Anna"}, "colour": "red"}),
    ("therapist", "/api/therapists/batch", {"items": [], "colour": "red"}),
    ("patient", "/api/patients", {"vorname": "Max", "colour": "red"}),
    ("patient", "/api/patients/batch", {"items": []}),
])
def test_every_other_route_still_answers_422_for_a_body_that_fails_validation(make_app, service, path, body):
    response = make_app(service).test_client().post(path, json=body, headers=AUTH)
    assert assert_problem(response, 422)["type"] == "validation-error"
