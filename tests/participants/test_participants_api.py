"""`POST /api/appointments/participants` and its reads (SPEC §6.6) against the real database:
the samples in order, every identity path, MIDs, bad input, replays and versions."""
from __future__ import annotations

import json

import pytest
from conftest import AUTH

from .support import PATH, REPRESENTATION, count, person, problem_errors, rows, sample, send


def post(client, body, headers=AUTH):
    return client.post(PATH, json=body, headers=headers)


def read(client, participant_id):
    response = client.get(f"{PATH}/{participant_id}", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# ---- the samples --------------------------------------------------------------------------------

def test_day_one_creates_both_with_201_and_day_two_applies_the_mid_story_with_204(therapist_client, admin_engine):
    first = post(therapist_client, sample("batch-day1"))
    assert first.status_code == 201
    assert first.get_data() == b""
    assert count(admin_engine, "participants") == 2

    second = post(therapist_client, sample("batch-day2"))
    assert second.status_code == 204
    assert count(admin_engine, "participants") == 2

    john = read(therapist_client, "temp-001")
    assert john["participantId"] == "temp-001"
    assert john["aliases"] == ["mid-4242"]
    assert john["mid"] == "MID-4242"
    assert john["attendanceStatus"] == "Attended"
    assert (john["firstName"], john["lastName"], john["email"]) == ("John", "Doe", "john.doe@example.com")
    assert john["version"] == 2
    assert john["batchId"] == "batch-20250822-001"
    assert read(therapist_client, "mid-4242") == john  # the alias finds him too

    alice = read(therapist_client, "mid-5555")
    assert alice["version"] == 1  # identical: nothing written
    assert alice["batchId"] == "batch-20250821-001"
    assert count(admin_engine, "participant_versions") == 3


def test_day_two_with_representation_reports_each_item(therapist_client):
    post(therapist_client, sample("batch-day1"))
    response = post(therapist_client, sample("batch-day2"), headers=REPRESENTATION)
    assert response.status_code == 200  # 204 cannot carry the body asked for
    assert response.headers["Preference-Applied"] == "return=representation"
    body = response.get_json()
    assert [(r["index"], r["id"], r["action"]) for r in body["results"]] == [
        (0, "temp-001", "updated"), (1, "mid-5555", "unchanged")]
    assert body["summary"]["created"] == 0
    assert body["summary"]["updated"] == 1 and body["summary"]["unchanged"] == 1 and body["summary"]["total"] == 2


def test_created_with_representation_is_201_with_results(therapist_client):
    response = send(therapist_client, person(1))
    assert response.status_code == 201
    assert response.get_json()["results"] == [{"index": 0, "id": "temp-001", "action": "created", "errors": []}]


# ---- identity paths ---------------------------------------------------------------------------------

def test_same_participant_id_updates_that_participant(therapist_client, admin_engine):
    send(therapist_client, person(1))
    response = send(therapist_client, person(1, attendanceStatus="Attended", firstName="Johanna"))
    assert response.get_json()["results"][0]["action"] == "updated"
    stored = read(therapist_client, "temp-001")
    assert (stored["firstName"], stored["attendanceStatus"], stored["version"]) == ("Johanna", "Attended", 2)
    assert count(admin_engine, "participants") == 1


def test_an_alias_finds_its_participant_even_with_other_names(therapist_client, admin_engine):
    send(therapist_client, person(1))
    send(therapist_client, person(1, participantId="later-id"))  # by name and e-mail: becomes an alias
    response = send(therapist_client, person(1, participantId="later-id", firstName="Janina", email="j@example.de"))
    assert response.get_json()["results"][0] == {"index": 0, "id": "temp-001", "action": "updated", "errors": []}
    assert read(therapist_client, "temp-001")["firstName"] == "Janina"
    assert count(admin_engine, "participants") == 1


def test_name_and_email_match_in_other_case_and_spacing_keeps_the_stored_spelling(therapist_client, admin_engine):
    send(therapist_client, person(1, firstName="Jürgen", lastName="Weiß", email="juergen@example.de"))
    response = send(therapist_client, person(1, participantId="other", firstName="  JÜRGEN ", lastName="WEISS",
                                             email=" Juergen@Example.DE "))
    assert response.get_json()["results"][0] == {"index": 0, "id": "temp-001", "action": "updated", "errors": []}
    stored = read(therapist_client, "other")
    assert (stored["firstName"], stored["lastName"], stored["email"]) == ("Jürgen", "Weiß", "juergen@example.de")
    assert stored["aliases"] == ["other"]
    assert count(admin_engine, "participants") == 1


def test_without_all_three_of_name_and_email_a_new_id_is_a_new_participant(therapist_client, admin_engine):
    send(therapist_client, person(1, email=None))
    response = send(therapist_client, person(1, participantId="other", email=None))
    assert response.status_code == 201
    assert count(admin_engine, "participants") == 2


def test_a_different_email_is_a_different_person(therapist_client, admin_engine):
    send(therapist_client, person(1))
    assert send(therapist_client, person(1, participantId="other", email="someone@example.de")).status_code == 201
    assert count(admin_engine, "participants") == 2


def test_two_items_of_one_batch_for_the_same_person_make_one_participant(therapist_client, admin_engine):
    response = send(therapist_client, person(1), person(1, participantId="again", lastName="SCHMITZ"))
    assert [(r["id"], r["action"]) for r in response.get_json()["results"]] == [
        ("temp-001", "created"), ("temp-001", "updated")]
    assert read(therapist_client, "again")["participantId"] == "temp-001"
    assert count(admin_engine, "participants") == 1


def test_an_id_change_that_takes_another_participants_identity_is_an_item_error(therapist_client):
    send(therapist_client, person(1), person(2))
    response = send(therapist_client, person(2, firstName="Jana1", email="jana1@example.de"))
    [error] = problem_errors(response)
    assert error["type"] == "identity-conflict" and error["existing_id"] == "temp-001"
    assert error["pointer"] == "/participants/0/email"


# ---- MIDs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["mid", "MID", "mId"])
def test_the_mid_is_accepted_under_each_spelling(therapist_client, key):
    item = {k: v for k, v in person(1).items() if k != "mid"}
    send(therapist_client, {**item, key: "MID-1"})
    assert read(therapist_client, "temp-001")["mid"] == "MID-1"


@pytest.mark.parametrize("first, second", [("MID-1", "MID-2"), (None, "MID-2")])
def test_two_mid_spellings_with_different_values_are_400(therapist_client, admin_engine, first, second):
    response = send(therapist_client, person(1), {**person(2), "mid": first, "MID": second})
    [error] = problem_errors(response)
    assert error["pointer"] == "/participants/1/MID"
    assert count(admin_engine, "participants") == 0


def test_two_mid_spellings_with_the_same_value_are_one_mid(therapist_client):
    assert send(therapist_client, {**person(1), "mid": "MID-1", "mId": "MID-1"}).status_code == 201
    assert read(therapist_client, "temp-001")["mid"] == "MID-1"


def test_a_mid_held_by_another_participant_is_an_item_error_and_nothing_is_written(therapist_client, admin_engine):
    send(therapist_client, person(1, mid="MID-1"))
    response = send(therapist_client, person(3), person(2, mid="MID-1"))
    [error] = problem_errors(response)
    assert (error["type"], error["pointer"], error["existing_id"]) == ("mid-conflict", "/participants/1/mid", "temp-001")
    assert count(admin_engine, "participants") == 1  # the valid item was not written either


def test_a_mid_taken_by_an_earlier_item_of_the_same_batch_is_an_item_error(therapist_client):
    [error] = problem_errors(send(therapist_client, person(1, mid="MID-1"), person(2, mid="MID-1")))
    assert (error["type"], error["pointer"]) == ("mid-conflict", "/participants/1/mid")


def test_a_null_mid_keeps_the_known_mid_and_a_new_one_replaces_it(therapist_client):
    send(therapist_client, person(1, mid="MID-1"))
    assert send(therapist_client, person(1, mid=None)).get_json()["results"][0]["action"] == "unchanged"
    assert read(therapist_client, "temp-001")["mid"] == "MID-1"
    send(therapist_client, person(1, mid="MID-2"))
    assert read(therapist_client, "temp-001")["mid"] == "MID-2"


def test_the_database_refuses_a_second_holder_of_a_mid(therapist_client, admin_engine):
    from sqlalchemy.exc import IntegrityError

    send(therapist_client, person(1, mid="MID-1"), person(2))
    with pytest.raises(IntegrityError, match="uq_participants_mid"):
        rows(admin_engine, "UPDATE therapist_service.participants SET mid = 'MID-1' WHERE id = 'temp-002' RETURNING id")


def test_the_database_refuses_one_id_for_two_participants(therapist_client, admin_engine):
    from sqlalchemy.exc import IntegrityError

    send(therapist_client, person(1), person(2))
    with pytest.raises(IntegrityError, match="participant_aliases_pkey"):
        rows(admin_engine, "INSERT INTO therapist_service.participant_aliases (alias, participant_id, created_at) "
                           "VALUES ('temp-001', 'temp-002', now()) RETURNING alias")


# ---- bad input ----------------------------------------------------------------------------------------

def test_a_missing_participant_id_names_the_item_and_nothing_is_written(therapist_client, admin_engine):
    item = {k: v for k, v in person(2).items() if k != "participantId"}
    errors = problem_errors(send(therapist_client, person(1), item))
    assert [(e["pointer"], e["index"]) for e in errors] == [("/participants/1/participantId", 1)]
    assert count(admin_engine, "participants") == 0


@pytest.mark.parametrize("participants", [[], None])
def test_an_empty_or_missing_batch_is_400(therapist_client, participants):
    body = {"batchId": "b-1"} if participants is None else {"participants": participants}
    [error] = problem_errors(post(therapist_client, body))
    assert error["pointer"] == "/participants"


def test_more_items_than_allowed_is_400(make_app):
    client = make_app("therapist", BATCH_MAX_ITEMS=2).test_client()
    [error] = problem_errors(send(client, person(1), person(2), person(3)))
    assert error == {"pointer": "/participants", "detail": "at most 2 participants"}


def test_a_participant_id_of_200_characters_is_stored_with_its_event(therapist_client, admin_engine):
    long_id = "p" * 200
    assert send(therapist_client, person(1, participantId=long_id)).status_code == 201
    assert read(therapist_client, long_id)["participantId"] == long_id
    assert rows(admin_engine, "SELECT record_id FROM therapist_service.event_outbox")[0].record_id == long_id


def test_blank_names_count_as_not_sent(therapist_client):
    send(therapist_client, person(1, firstName="   ", lastName=""))
    stored = read(therapist_client, "temp-001")
    assert (stored["firstName"], stored["lastName"]) == (None, None)


def test_unknown_fields_and_bad_email_name_their_item(therapist_client):
    errors = problem_errors(send(therapist_client, person(1, nickname="J"), person(2, email="not-an-address")))
    assert sorted(e["pointer"] for e in errors) == ["/participants/0/nickname", "/participants/1/email"]


# ---- idempotency and versions ---------------------------------------------------------------------------

def test_the_same_idempotency_key_replays_the_answer_without_writing_again(therapist_client, admin_engine):
    headers = {**AUTH, "Idempotency-Key": "upstream-batch-1"}
    first = post(therapist_client, sample("batch-day1"), headers=headers)
    again = post(therapist_client, sample("batch-day1"), headers={**headers, "Prefer": "return=representation"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [r["action"] for r in again.get_json()["results"]] == ["created", "created"]  # the first answer
    assert count(admin_engine, "participant_versions") == 2
    stored = therapist_client.get("/api/batches/upstream-batch-1", headers=AUTH).get_json()
    assert stored["response_status"] == 201


def test_x_request_id_counts_as_the_key_and_another_body_under_it_is_422(therapist_client):
    headers = {**AUTH, "X-Request-ID": "req-7"}
    assert post(therapist_client, sample("batch-day1"), headers=headers).status_code == 201
    assert post(therapist_client, sample("batch-day1"), headers=headers).headers["Idempotent-Replayed"] == "true"
    response = post(therapist_client, sample("batch-day2"), headers=headers)
    assert response.status_code == 422
    assert response.get_json()["type"] == "idempotency-key-reused"


def test_an_identical_resend_writes_no_version_and_no_event(therapist_client, admin_engine):
    send(therapist_client, person(1), person(2))
    before = count(admin_engine, "participant_versions"), count(admin_engine, "event_outbox")
    response = send(therapist_client, person(1), person(2, firstName=" jana2 "), batchId="another-batch")
    assert [r["action"] for r in response.get_json()["results"]] == ["unchanged", "unchanged"]
    assert (count(admin_engine, "participant_versions"), count(admin_engine, "event_outbox")) == before == (2, 2)
    assert read(therapist_client, "temp-002")["version"] == 1


def test_history_holds_each_version_as_it_was_read(therapist_client):
    send(therapist_client, person(1), batchId="b-1", source="upstream")
    send(therapist_client, person(1, participantId="later", attendanceStatus="Attended"), batchId="b-2")
    current = read(therapist_client, "temp-001")
    response = therapist_client.get(f"{PATH}/later/history", headers=AUTH)
    assert response.status_code == 200
    history = response.get_json()
    assert [h["version"] for h in history] == [2, 1]
    assert {h["source"] for h in history} == {"batch"}
    assert history[0]["data"] == current
    assert (history[1]["data"]["batchId"], history[1]["data"]["aliases"]) == ("b-1", [])


# ---- reads ---------------------------------------------------------------------------------------------

def test_list_filters_by_mid_email_and_event_and_pages(therapist_client):
    send(therapist_client, person(1, mid="MID-1"), person(2, metadata={"eventId": "event-2"}), person(3))

    def ids(query):
        response = therapist_client.get(f"{PATH}?{query}", headers=AUTH)
        assert response.status_code == 200
        return [p["participantId"] for p in response.get_json()]
    assert ids("mid=MID-1") == ["temp-001"]
    assert ids("email=JANA2@example.de") == ["temp-002"]
    assert ids("eventId=event-1") == ["temp-001", "temp-003"]
    assert ids("page=2&page_size=2") == ["temp-003"]
    pagination = json.loads(therapist_client.get(f"{PATH}?page_size=2", headers=AUTH).headers["X-Pagination"])
    assert (pagination["total"], pagination["total_pages"]) == (3, 2)


def test_an_unknown_id_is_404(therapist_client):
    assert therapist_client.get(f"{PATH}/nobody", headers=AUTH).status_code == 404
    assert therapist_client.get(f"{PATH}/nobody/history", headers=AUTH).status_code == 404


def test_every_participant_response_carries_no_store(therapist_client):
    responses = [send(therapist_client, person(1)), therapist_client.get(PATH, headers=AUTH),
                 therapist_client.get(f"{PATH}/temp-001", headers=AUTH),
                 therapist_client.get(f"{PATH}/temp-001/history", headers=AUTH),
                 therapist_client.get(f"{PATH}/nobody", headers=AUTH), send(therapist_client)]
    assert [r.headers.get("Cache-Control") for r in responses] == ["no-store"] * len(responses)


def test_a_token_is_needed(therapist_client):
    assert therapist_client.get(PATH).status_code == 401
    assert therapist_client.post(PATH, json=sample("batch-day1")).status_code == 401
