"""Racing batches against the real database with real threads: the identity rule and the MID
rule hold whatever the interleaving, because the database enforces them."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from conftest import AUTH

from .support import PATH, count, person, rows

ROUNDS = 25


def race(app, *bodies):
    """Send each body from its own thread, released together; the responses in order."""
    start = threading.Barrier(len(bodies))

    def post(body):
        client = app.test_client()
        start.wait()
        return client.post(PATH, json=body, headers={**AUTH, "Prefer": "return=representation"})

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_two_threads_creating_one_person_under_different_temporary_ids_make_one_participant(therapist_app,
                                                                                          admin_engine):
    for round_ in range(ROUNDS):
        same = {"firstName": f"Racer{round_}", "lastName": "Doe", "email": f"racer{round_}@example.de"}
        first, second = race(therapist_app,
                             {"participants": [person(0, participantId=f"a-{round_}", **same)]},
                             {"participants": [person(0, participantId=f"b-{round_}", lastName="DOE ",
                                                      **{k: v for k, v in same.items() if k != "lastName"})]})
        assert sorted((first.status_code, second.status_code)) == [200, 201], (first.get_json(), second.get_json())
        [owner] = rows(admin_engine, "SELECT id FROM therapist_service.participants WHERE match_email = :email",
                       email=f"racer{round_}@example.de")
        aliases = rows(admin_engine, "SELECT alias FROM therapist_service.participant_aliases "
                                     "WHERE participant_id = :id ORDER BY alias", id=owner.id)
        assert [a.alias for a in aliases] == [f"a-{round_}", f"b-{round_}"]
    assert count(admin_engine, "participants") == ROUNDS


def test_two_threads_giving_one_mid_to_two_people_leave_it_with_one(therapist_app, admin_engine):
    for round_ in range(ROUNDS):
        mid = f"MID-{round_}"
        first, second = race(therapist_app,
                             {"participants": [person(2 * round_, mid=mid)]},
                             {"participants": [person(2 * round_ + 1, mid=mid)]})
        statuses = sorted((first.status_code, second.status_code))
        assert statuses == [201, 400], (first.get_json(), second.get_json())
        loser = first if first.status_code == 400 else second
        assert loser.get_json()["errors"][0]["type"] == "mid-conflict"
        assert len(rows(admin_engine, "SELECT id FROM therapist_service.participants WHERE mid = :mid", mid=mid)) == 1
