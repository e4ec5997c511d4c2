"""Batch requests (`POST /api/patients/batch`, `POST /api/therapists/batch`) end to end: modes,
dry runs, `Prefer: return=minimal`, idempotency keys and the history each item leaves."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from conftest import AUTH, OTHER_TOKEN
from sqlalchemy import text

PROBLEM = "application/problem+json"
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_TOKEN}"}
MINIMAL = {"Prefer": "return=minimal"}
PATIENTS_BATCH, THERAPISTS_BATCH = "/api/patients/batch", "/api/therapists/batch"


def patient_item(n=0, **overrides):
    item = {"vorname": f"Max{n}", "nachname": "Mustermann", "geburtsdatum": "1990-05-17",
            "email": f"max{n}@example.de", "telefon": "0241 123456", "strasse": "Pontstraße 12",
            "plz": "52062", "ort": "Aachen"}
    item.update(overrides)
    return item


def therapist_item(n=0, **overrides):
    item = {"external_id": f"praxis{n}", "last_modified": "2025-07-02T03:13:24",
            "basic_info": {"first_name": "Thomas", "last_name": f"Zeevaert{n}"},
            "location": {"street": "Theaterstraße", "house_number": "44", "postcode": "52062", "city": "Aachen"}}
    item.update(overrides)
    return item


INVALID_ITEM = {"patient": ("email", {"email": "not-an-e-mail"}),
                "therapist": ("location", {"location": {"postcode": "5206"}})}
SERVICES = {"patient": (PATIENTS_BATCH, patient_item, "patient_service.patients", "patient_service.patient_versions"),
            "therapist": (THERAPISTS_BATCH, therapist_item, "therapist_service.therapists",
                          "therapist_service.therapist_versions")}


def send(client, items, headers=AUTH, path=PATIENTS_BATCH, **options):
    return client.post(path, json={"items": items, **options}, headers=headers)


def scalar(admin_engine, query):
    with admin_engine.connect() as conn:
        return conn.scalar(text(query))


def count(admin_engine, table):
    return scalar(admin_engine, f"SELECT count(*) FROM {table}")


def keyed(key, headers=AUTH):
    return {**headers, "Idempotency-Key": key}


def assert_problem(response, status):
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    return body


@pytest.fixture
def client_of(patient_client, therapist_client):
    return {"patient": patient_client, "therapist": therapist_client}


# ---- modes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("service", SERVICES)
def test_transaction_mode_with_an_invalid_item_gives_422_per_failed_item_and_writes_nothing(
        service, client_of, admin_engine):
    path, item, records, versions = SERVICES[service]
    field, broken = INVALID_ITEM[service]
    items = [item(0), item(1, **broken), item(2), item(3, **broken)]

    response = send(client_of[service], items, path=path, mode="transaction")

    body = assert_problem(response, 422)
    assert [(e["index"], e["pointer"].split("/")[:4]) for e in body["errors"]] == [
        (1, ["", "items", "1", field]), (3, ["", "items", "3", field])]
    assert all(e["detail"] and e["type"] == "validation-error" for e in body["errors"])
    assert count(admin_engine, records) == 0
    assert count(admin_engine, versions) == 0


def test_transaction_is_the_default_mode(patient_client, admin_engine):
    response = send(patient_client, [patient_item(0), patient_item(1, email="nope")])

    assert_problem(response, 422)
    assert count(admin_engine, "patient_service.patients") == 0


def test_transaction_mode_names_an_item_that_failed_in_the_service_by_its_index(patient_client, admin_engine):
    response = send(patient_client, [patient_item(0), {"id": 999_999, **patient_item(1)}], mode="transaction")

    body = assert_problem(response, 422)
    assert [(e["index"], e["pointer"], e["type"]) for e in body["errors"]] == [(1, "/items/1", "not-found")]
    assert count(admin_engine, "patient_service.patients") == 0


@pytest.mark.parametrize("service", SERVICES)
def test_batch_mode_writes_the_valid_items_and_reports_the_failed_one(service, client_of, admin_engine):
    path, item, records, versions = SERVICES[service]
    field, broken = INVALID_ITEM[service]

    response = send(client_of[service], [item(0), item(1, **broken), item(2)], path=path, mode="batch")

    assert response.status_code == 201
    body = response.get_json()
    assert [r["action"] for r in body["results"]] == ["created", "error", "created"]
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    failed = body["results"][1]
    assert failed["id"] is None
    assert [e["pointer"].split("/")[1] for e in failed["errors"]] == [field]
    assert all(e["detail"] and e["type"] == "validation-error" for e in failed["errors"])
    assert body["summary"]["created"] == 2 and body["summary"]["error"] == 1 and body["summary"]["total"] == 3
    assert body["dry_run"] is False
    assert count(admin_engine, records) == 2
    assert count(admin_engine, versions) == 2
    for result in (body["results"][0], body["results"][2]):
        url = f"{path.removesuffix('/batch')}/{result['id']}"
        assert client_of[service].get(url, headers=AUTH).status_code == 200


def test_item_that_is_not_an_object_is_an_item_error(patient_client):
    response = send(patient_client, [patient_item(0), "max@example.de"], mode="batch")

    results = response.get_json()["results"]
    assert results[1]["action"] == "error"
    assert results[1]["errors"][0]["pointer"] == "/"


# ---- the temporary-id story --------------------------------------------------------------------

def test_patient_sent_without_id_then_with_our_id_then_by_email_and_name_stays_one_patient(
        patient_client, admin_engine):
    first = send(patient_client, [patient_item(telefon="0241 111111", strasse="Pontstraße 12")])
    assert first.status_code == 201
    created = first.get_json()["results"][0]
    assert created["action"] == "created"
    patient_id = created["id"]

    second = send(patient_client, [{"id": patient_id, **patient_item(telefon="0241 222222", strasse="Pontstraße 12")}])
    assert second.status_code == 200
    assert second.get_json()["results"][0] == {"index": 0, "id": patient_id, "action": "updated", "errors": []}

    third = send(patient_client, [patient_item(email="  MAX0@Example.DE ", vorname=" max0 ", nachname="MUSTERMANN  ",
                                               telefon="0241 222222", strasse="Templergraben 55")])
    assert third.status_code == 200
    assert third.get_json()["results"][0] == {"index": 0, "id": patient_id, "action": "updated", "errors": []}

    assert count(admin_engine, "patient_service.patients") == 1
    stored = patient_client.get(f"/api/patients/{patient_id}", headers=AUTH).get_json()
    assert (stored["telefon"], stored["strasse"], stored["version"]) == ("0241 222222", "Templergraben 55", 3)
    history = patient_client.get(f"/api/patients/{patient_id}/history", headers=AUTH).get_json()
    assert [(v["version"], v["source"], v["actor"]) for v in history] == [
        (3, "batch", "tests"), (2, "batch", "tests"), (1, "batch", "tests")]
    assert [v["data"]["telefon"] for v in reversed(history)] == ["0241 111111", "0241 222222", "0241 222222"]
    assert [v["data"]["strasse"] for v in reversed(history)] == ["Pontstraße 12", "Pontstraße 12", "Templergraben 55"]


def test_item_with_an_unknown_id_of_ours_is_an_item_error_not_a_create(patient_client, admin_engine):
    response = send(patient_client, [{"id": 424242, **patient_item()}], mode="batch")

    assert response.status_code == 200
    result = response.get_json()["results"][0]
    assert (result["action"], result["errors"][0]["type"]) == ("error", "not-found")
    assert count(admin_engine, "patient_service.patients") == 0


# ---- status codes and Prefer: return=minimal ---------------------------------------------------

def test_batch_that_creates_something_gives_201_and_one_that_does_not_gives_200(patient_client):
    items = [patient_item(0), patient_item(1)]

    created = send(patient_client, items)
    again = send(patient_client, items)

    assert created.status_code == 201
    assert created.get_json()["summary"]["created"] == 2
    assert again.status_code == 200
    assert [r["action"] for r in again.get_json()["results"]] == ["unchanged", "unchanged"]
    assert [r["id"] for r in again.get_json()["results"]] == [r["id"] for r in created.get_json()["results"]]


def test_return_minimal_gives_201_or_204_without_body_and_says_the_preference_was_applied(patient_client):
    items = [patient_item(0), patient_item(1)]

    created = send(patient_client, items, headers={**AUTH, **MINIMAL})
    again = send(patient_client, items, headers={**AUTH, **MINIMAL})

    for response, status in ((created, 201), (again, 204)):
        assert response.status_code == status
        assert response.data == b""
        assert response.headers["Preference-Applied"] == "return=minimal"
    listed = patient_client.get("/api/patients", headers=AUTH).get_json()
    assert len(listed) == 2


def test_return_minimal_does_not_hide_a_failed_transaction(patient_client):
    response = send(patient_client, [patient_item(email="nope")], headers={**AUTH, **MINIMAL})

    assert_problem(response, 422)
    assert "Preference-Applied" not in response.headers


# ---- dry run -----------------------------------------------------------------------------------

def test_dry_run_writes_nothing_and_answers_like_the_real_run(patient_client, admin_engine):
    existing = send(patient_client, [patient_item(0)]).get_json()["results"][0]["id"]
    items = [patient_item(0, ort="Köln"), patient_item(1), patient_item(2, email="nope")]
    before = (count(admin_engine, "patient_service.patients"), count(admin_engine, "patient_service.patient_versions"))

    dry = send(patient_client, items, headers=keyed("dry-1"), mode="batch", dry_run=True)

    assert (count(admin_engine, "patient_service.patients"),
            count(admin_engine, "patient_service.patient_versions")) == before == (1, 1)
    assert count(admin_engine, "patient_service.idempotency_keys") == 0
    assert_problem(patient_client.get("/api/batches/dry-1", headers=AUTH), 404)
    assert "Idempotent-Replayed" not in dry.headers

    real = send(patient_client, items, mode="batch")

    assert dry.status_code == real.status_code == 201
    dry_body, real_body = dry.get_json(), real.get_json()
    assert (dry_body["dry_run"], real_body["dry_run"]) == (True, False)
    assert dry_body["summary"] == real_body["summary"]
    assert [r["action"] for r in dry_body["results"]] == ["updated", "created", "error"]
    assert [r["action"] for r in dry_body["results"]] == [r["action"] for r in real_body["results"]]
    assert [r["errors"] for r in dry_body["results"]] == [r["errors"] for r in real_body["results"]]
    assert dry_body["results"][0]["id"] == real_body["results"][0]["id"] == existing
    assert dry_body["results"][1]["id"] is None  # assigned only when written for real
    assert isinstance(real_body["results"][1]["id"], int)


def test_dry_run_of_a_failing_transaction_gives_the_same_422(patient_client, admin_engine):
    items = [patient_item(0), patient_item(1, email="nope")]

    dry = send(patient_client, items, dry_run=True)
    real = send(patient_client, items)

    assert dry.status_code == real.status_code == 422
    assert dry.get_json() == real.get_json()
    assert count(admin_engine, "patient_service.patients") == 0


# ---- idempotency keys --------------------------------------------------------------------------

def test_replay_with_the_same_key_returns_identical_status_and_body_and_writes_nothing(patient_client, admin_engine):
    items = [patient_item(0), patient_item(1)]
    first = send(patient_client, items, headers=keyed("sync-2025-07-02"))
    versions = count(admin_engine, "patient_service.patient_versions")
    stamp = scalar(admin_engine, "SELECT max(updated_at) FROM patient_service.patients")

    replay = send(patient_client, items, headers=keyed("sync-2025-07-02"))

    assert first.status_code == replay.status_code == 201
    assert replay.data == first.data
    assert replay.mimetype == first.mimetype == "application/json"
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count(admin_engine, "patient_service.patient_versions") == versions == 2
    assert scalar(admin_engine, "SELECT max(updated_at) FROM patient_service.patients") == stamp


def test_replay_of_a_failed_transaction_returns_the_same_422(patient_client, admin_engine):
    items = [patient_item(0), patient_item(1, email="nope")]
    first = send(patient_client, items, headers=keyed("k-422"))

    replay = send(patient_client, items, headers=keyed("k-422"))

    assert first.status_code == replay.status_code == 422
    assert replay.data == first.data
    assert replay.mimetype == PROBLEM
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert count(admin_engine, "patient_service.patients") == 0


def test_x_request_id_works_as_the_idempotency_key(patient_client, admin_engine):
    items = [patient_item(0)]
    first = send(patient_client, items, headers={**AUTH, "X-Request-ID": "req-7"})

    by_same_header = send(patient_client, items, headers={**AUTH, "X-Request-ID": "req-7"})
    by_the_standard_header = send(patient_client, items, headers=keyed("req-7"))

    for replay in (by_same_header, by_the_standard_header):
        assert (replay.status_code, replay.data) == (201, first.data)
        assert replay.headers["Idempotent-Replayed"] == "true"
    assert count(admin_engine, "patient_service.patient_versions") == 1
    stored = patient_client.get("/api/batches/req-7", headers=AUTH).get_json()
    assert (stored["status"], stored["response_status"], stored["response"]) == ("done", 201, first.get_json())


def test_replay_honours_return_minimal_of_the_retry(patient_client):
    items = [patient_item(0)]
    send(patient_client, items, headers=keyed("k-min"))

    replay = send(patient_client, items, headers={**keyed("k-min"), **MINIMAL})

    assert (replay.status_code, replay.data) == (201, b"")
    assert replay.headers["Preference-Applied"] == "return=minimal"
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_same_key_with_another_body_gives_422_and_writes_nothing(patient_client, admin_engine):
    send(patient_client, [patient_item(0)], headers=keyed("k-1"))

    response = send(patient_client, [patient_item(1)], headers=keyed("k-1"))

    body = assert_problem(response, 422)
    assert body["type"] == "idempotency-key-reused"
    assert count(admin_engine, "patient_service.patients") == 1


def test_same_key_and_items_in_another_mode_is_another_body(patient_client):
    send(patient_client, [patient_item(0)], headers=keyed("k-mode"), mode="transaction")

    response = send(patient_client, [patient_item(0)], headers=keyed("k-mode"), mode="batch")

    assert assert_problem(response, 422)["type"] == "idempotency-key-reused"


def test_the_key_is_scoped_to_the_token(patient_client, admin_engine):
    mine = send(patient_client, [patient_item(0)], headers=keyed("shared-key"))

    theirs = send(patient_client, [patient_item(1)], headers=keyed("shared-key", OTHER_AUTH))
    theirs_with_my_body = send(patient_client, [patient_item(0)], headers=keyed("other-key", OTHER_AUTH))
    same_key_same_body = send(patient_client, [patient_item(0)], headers=keyed("shared-key", OTHER_AUTH))

    assert mine.status_code == theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["results"][0]["action"] == "created"
    assert theirs_with_my_body.get_json()["results"][0]["action"] == "unchanged"
    assert assert_problem(same_key_same_body, 422)["type"] == "idempotency-key-reused"  # theirs had patient 1
    assert count(admin_engine, "patient_service.patients") == 2
    assert patient_client.get("/api/batches/shared-key", headers=AUTH).get_json()["response"] == mine.get_json()
    assert patient_client.get("/api/batches/shared-key", headers=OTHER_AUTH).get_json()["response"] == \
        theirs.get_json()


@pytest.mark.parametrize("key", ["k" * 256, "nul\x00inside"])
def test_idempotency_key_the_database_cannot_store_gives_422_not_500(patient_client, admin_engine, key):
    response = send(patient_client, [patient_item(0)], headers=keyed(key))

    body = assert_problem(response, 422)
    assert body["errors"][0]["parameter"] == "Idempotency-Key"
    assert count(admin_engine, "patient_service.patients") == 0


def test_idempotency_key_of_255_characters_is_accepted(patient_client):
    first = send(patient_client, [patient_item(0)], headers=keyed("k" * 255))
    replay = send(patient_client, [patient_item(0)], headers=keyed("k" * 255))

    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_stored_outcome_of_a_key_with_slashes_can_be_read(patient_client):
    sent = send(patient_client, [patient_item(0)], headers=keyed("sync/2025-07-02/1"))

    stored = patient_client.get("/api/batches/sync%2F2025-07-02%2F1", headers=AUTH)

    assert stored.status_code == 200
    assert stored.get_json()["response"] == sent.get_json()


def test_stored_outcome_is_404_for_an_unknown_key(patient_client):
    assert_problem(patient_client.get("/api/batches/never-sent", headers=AUTH), 404)


@contextmanager
def patient_writes_held(admin_engine):
    """Hold every write to the patients table (reads pass) from another connection until the block ends."""
    with admin_engine.connect() as lock, lock.begin():
        lock.execute(text("LOCK TABLE patient_service.patients IN EXCLUSIVE MODE"))
        yield


def wait_until_claimed_and_held(admin_engine, request):
    """Until the request has committed its claim on the key and waits for the held patients table."""
    deadline = time.monotonic() + 30
    while True:
        with admin_engine.connect() as conn:
            claimed = conn.scalar(text(
                "SELECT count(*) FROM patient_service.idempotency_keys WHERE status = 'running'"))
            waiting = conn.scalars(text(
                "SELECT pid FROM pg_locks WHERE NOT granted AND relation = 'patient_service.patients'::regclass "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).all()
        if claimed == 1 and len(waiting) == 1:
            return waiting[0]
        assert not request.done(), request.result().get_json()
        assert time.monotonic() < deadline, "the request never reached its first write"
        time.sleep(0.02)


def test_concurrent_requests_with_one_key_give_one_result_and_one_409(patient_app, admin_engine):
    """Deterministic overlap: the first request is held at its first write by a table lock taken
    before it starts; the second is sent once the first has provably claimed the key and waits."""
    items = [patient_item(n) for n in range(300)]
    headers = keyed("sync-concurrent")
    with ThreadPoolExecutor(max_workers=1) as pool:
        with patient_writes_held(admin_engine):
            first = pool.submit(send, patient_app.test_client(), items, headers)
            wait_until_claimed_and_held(admin_engine, first)

            second = send(patient_app.test_client(), items, headers)

            assert not first.done()
        first = first.result(timeout=60)

    body = assert_problem(second, 409)
    assert body["type"] == "idempotency-key-in-use"
    assert first.status_code == 201
    assert first.get_json()["summary"]["created"] == 300
    assert count(admin_engine, "patient_service.patients") == 300
    assert count(admin_engine, "patient_service.patient_versions") == 300
    replay = send(patient_app.test_client(), items, headers)
    assert (replay.status_code, replay.data) == (201, first.data)


def test_a_request_that_fails_unexpectedly_frees_its_key_for_a_retry(patient_app, admin_engine):
    items = [patient_item(0)]
    with ThreadPoolExecutor(max_workers=1) as pool, patient_writes_held(admin_engine):
        first = pool.submit(send, patient_app.test_client(), items, keyed("k-fail"))
        backend = wait_until_claimed_and_held(admin_engine, first)
        with admin_engine.connect() as conn:
            conn.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": backend})
        failed = first.result(timeout=30)

    retried = send(patient_app.test_client(), items, keyed("k-fail"))

    assert_problem(failed, 500)
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert count(admin_engine, "patient_service.patients") == 1


def test_an_expired_key_is_forgotten(patient_client, admin_engine):
    send(patient_client, [patient_item(0)], headers=keyed("k-old"))
    with admin_engine.begin() as conn:
        conn.execute(text("UPDATE patient_service.idempotency_keys SET expires_at = now() - interval '1 second'"))

    assert_problem(patient_client.get("/api/batches/k-old", headers=AUTH), 404)
    response = send(patient_client, [patient_item(1)], headers=keyed("k-old"))

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    assert response.get_json()["results"][0]["action"] == "created"
    assert count(admin_engine, "patient_service.patients") == 2
    stored = patient_client.get("/api/batches/k-old", headers=AUTH).get_json()
    assert stored["response"] == response.get_json()


def test_keys_are_kept_for_idempotency_ttl_hours(make_app, admin_engine):
    client = make_app("patient", IDEMPOTENCY_TTL_HOURS=2).test_client()
    send(client, [patient_item(0)], headers=keyed("k-ttl"))

    with admin_engine.connect() as conn:
        kept = conn.scalar(text("SELECT expires_at - created_at FROM patient_service.idempotency_keys"))

    assert kept.total_seconds() == 2 * 3600


# ---- limits ------------------------------------------------------------------------------------

def test_too_many_items_gives_413_with_a_clear_message(make_app, admin_engine):
    client = make_app("patient", BATCH_MAX_ITEMS=3).test_client()

    response = send(client, [patient_item(n) for n in range(4)])

    body = assert_problem(response, 413)
    assert "4 items" in body["detail"] and "at most 3" in body["detail"]
    assert count(admin_engine, "patient_service.patients") == 0
    assert send(client, [patient_item(n) for n in range(3)]).status_code == 201


def test_empty_items_gives_422(patient_client):
    response = send(patient_client, [])

    body = assert_problem(response, 422)
    assert [e["pointer"] for e in body["errors"]] == ["/items"]


@pytest.mark.parametrize("body", [{}, {"items": [{}], "mode": "all-or-nothing"}, {"items": [{}], "extra": 1}])
def test_malformed_batch_body_gives_422(patient_client, body):
    assert_problem(patient_client.post(PATIENTS_BATCH, json=body, headers=AUTH), 422)


def test_batch_needs_a_token(patient_client):
    assert patient_client.post(PATIENTS_BATCH, json={"items": [patient_item()]}).status_code == 401


# ---- history -----------------------------------------------------------------------------------

def test_every_item_history_names_the_batch_and_the_token(patient_client, admin_engine):
    created = send(patient_client, [patient_item(n) for n in range(3)], headers=OTHER_AUTH).get_json()["results"]
    ids = [r["id"] for r in created]
    send(patient_client, [{"id": ids[0], **patient_item(0, ort="Köln")}, {"op": "delete", "id": ids[1]}])

    histories = {i: patient_client.get(f"/api/patients/{i}/history", headers=AUTH).get_json() for i in ids}

    assert [(v["version"], v["source"], v["actor"]) for v in histories[ids[0]]] == [
        (2, "batch", "tests"), (1, "batch", "other")]
    assert [(v["version"], v["source"], v["actor"]) for v in histories[ids[1]]] == [
        (2, "batch", "tests"), (1, "batch", "other")]  # version 2 is the deletion
    assert [(v["version"], v["source"], v["actor"]) for v in histories[ids[2]]] == [(1, "batch", "other")]
    with admin_engine.connect() as conn:
        deleted = conn.execute(text("SELECT record_id, version FROM patient_service.patient_versions "
                                    "WHERE deleted")).all()
    assert deleted == [(ids[1], 2)]


def test_patient_delete_item_soft_deletes(patient_client):
    patient_id = send(patient_client, [patient_item()]).get_json()["results"][0]["id"]

    response = send(patient_client, [{"op": "delete", "id": patient_id}])

    assert response.status_code == 200
    assert response.get_json()["results"][0] == {"index": 0, "id": patient_id, "action": "deleted", "errors": []}
    assert patient_client.get(f"/api/patients/{patient_id}", headers=AUTH).status_code == 410


def test_a_patient_created_updated_and_deleted_in_one_batch_has_its_versions_and_events_in_order(
        patient_client, admin_engine):
    """A batch writes its versions and events together at the end, except before a delete item:
    the deleted patient's earlier versions come first."""
    response = send(patient_client, [patient_item(7), patient_item(7, ort="Köln"), patient_item(8)])
    patient_id = response.get_json()["results"][0]["id"]

    send(patient_client, [patient_item(7, ort="Bonn"), {"op": "delete", "id": patient_id}, patient_item(9)])

    history = patient_client.get(f"/api/patients/{patient_id}/history", headers=AUTH).get_json()
    assert [(v["version"], v["data"]["ort"]) for v in history] == [(4, "Bonn"), (3, "Bonn"), (2, "Köln"), (1, "Aachen")]
    with admin_engine.connect() as conn:
        events = conn.execute(text("SELECT type, sequence FROM patient_service.event_outbox WHERE record_id = :id "
                                   "ORDER BY id"), {"id": str(patient_id)}).all()
    assert [(e.type.rsplit(".", 1)[1], e.sequence) for e in events] == [
        ("created", 1), ("updated", 2), ("updated", 3), ("deleted", 4)]


def test_a_patient_created_by_a_batch_is_stored_as_one_created_over_rest(patient_client, admin_engine):
    """A batch writes its new patients by COPY: every column as the ORM writes it for a REST create
    (a missing list or group is JSON null, not SQL NULL), and a later item of the same batch that
    updates one of them is written too."""
    minimal = {key: patient_item(1)[key] for key in ("vorname", "nachname", "geburtsdatum", "email")}
    over_rest = patient_client.post("/api/patients", json=minimal, headers=AUTH).get_json()["id"]
    by_batch = send(patient_client, [dict(minimal, email="other@example.de"), patient_item(2),
                                     patient_item(2, ort="Köln")]).get_json()["results"]

    # Each column's value, and whether it is SQL NULL (to_jsonb alone shows SQL NULL and JSON null alike).
    query = text("SELECT jsonb_object_agg(key, jsonb_build_array(value, value IS NULL)) FROM patient_service.patients p, "
                 "jsonb_each(to_jsonb(p) - 'id' - 'email' - 'match_email' - 'created_at' - 'updated_at') "
                 "WHERE id = :id")
    nulls = text("SELECT symptome IS NULL, zeitliche_verfuegbarkeit IS NULL FROM patient_service.patients WHERE id = :id")
    with admin_engine.connect() as conn:
        rows = [conn.execute(query, {"id": patient_id}).scalar_one() for patient_id in (over_rest, by_batch[0]["id"])]
        sql_nulls = [tuple(conn.execute(nulls, {"id": patient_id}).one()) for patient_id in (over_rest, by_batch[0]["id"])]
        updated = conn.execute(text("SELECT ort, version FROM patient_service.patients WHERE id = :id"),
                               {"id": by_batch[1]["id"]}).one()
    assert rows[0] == rows[1]
    assert sql_nulls[0] == sql_nulls[1]
    assert tuple(updated) == ("Köln", 2)


# ---- therapists --------------------------------------------------------------------------------

def test_therapists_are_matched_on_external_id_and_latest_wins(therapist_client, admin_engine):
    created = send(therapist_client, [therapist_item(1)], path=THERAPISTS_BATCH)
    therapist_id = created.get_json()["results"][0]["id"]
    newer = therapist_item(1, last_modified="2025-08-01T00:00:00",
                           location={"street": "Markt", "house_number": "1", "postcode": "52062", "city": "Aachen"})
    older = therapist_item(1, last_modified="2025-06-01T00:00:00",
                           location={"street": "Dom", "house_number": "2", "postcode": "52062", "city": "Aachen"})

    response = send(therapist_client, [newer, older, therapist_item(2)], path=THERAPISTS_BATCH, mode="batch")

    assert created.status_code == 201
    assert response.status_code == 201
    results = response.get_json()["results"]
    assert [(r["id"], r["action"]) for r in results[:2]] == [(therapist_id, "updated"), (therapist_id, "ignored_stale")]
    assert results[2]["action"] == "created"
    assert response.get_json()["summary"]["ignored_stale"] == 1
    stored = therapist_client.get(f"/api/therapists/{therapist_id}", headers=AUTH).get_json()
    assert (stored["location"]["street"], stored["version"]) == ("Markt", 2)
    assert count(admin_engine, "therapist_service.therapists") == 2


def test_therapist_sent_again_unchanged_gives_200_unchanged(therapist_client):
    send(therapist_client, [therapist_item(1)], path=THERAPISTS_BATCH)

    again = send(therapist_client, [therapist_item(1, last_modified="2025-09-01T00:00:00")], path=THERAPISTS_BATCH)

    assert again.status_code == 200
    assert again.get_json()["results"][0]["action"] == "unchanged"


def test_therapist_delete_item_soft_deletes(therapist_client):
    therapist_id = send(therapist_client, [therapist_item(1)], path=THERAPISTS_BATCH).get_json()["results"][0]["id"]

    response = send(therapist_client, [{"op": "delete", "id": therapist_id}], path=THERAPISTS_BATCH)

    assert response.status_code == 200
    assert response.get_json()["results"][0] == {"index": 0, "id": therapist_id, "action": "deleted", "errors": []}
    assert therapist_client.get(f"/api/therapists/{therapist_id}", headers=AUTH).status_code == 410
    history = therapist_client.get(f"/api/therapists/{therapist_id}/history", headers=AUTH).get_json()
    assert [(v["version"], v["source"], v["actor"]) for v in history] == [(2, "batch", "tests"), (1, "batch", "tests")]
    assert therapist_client.get("/api/therapists?include_deleted=true", headers=AUTH).get_json()[0]["deleted_at"]


def test_therapist_delete_of_an_unknown_id_is_a_not_found_item_error(therapist_client, admin_engine):
    response = send(therapist_client, [therapist_item(1), {"op": "delete", "id": 777}],
                    path=THERAPISTS_BATCH, mode="batch")

    results = response.get_json()["results"]
    assert response.status_code == 201
    assert results[1]["action"] == "error"
    assert [(e["type"], e["pointer"]) for e in results[1]["errors"]] == [("not-found", "/")]
    assert "777" in results[1]["errors"][0]["detail"]
    assert count(admin_engine, "therapist_service.therapists") == 1


def test_therapist_idempotency_key_replays_like_the_patients_one(therapist_client, admin_engine):
    items = [therapist_item(1)]
    first = send(therapist_client, items, headers=keyed("t-1"), path=THERAPISTS_BATCH)

    replay = send(therapist_client, items, headers=keyed("t-1"), path=THERAPISTS_BATCH)
    reused = send(therapist_client, [therapist_item(2)], headers=keyed("t-1"), path=THERAPISTS_BATCH)

    assert (replay.status_code, replay.data) == (first.status_code, first.data) == (201, first.data)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert assert_problem(reused, 422)["type"] == "idempotency-key-reused"
    assert count(admin_engine, "therapist_service.therapist_versions") == 1
    stored = therapist_client.get("/api/batches/t-1", headers=AUTH).get_json()
    assert stored["response"] == first.get_json()


# ---- the OpenAPI document ----------------------------------------------------------------------

@pytest.mark.parametrize("service, path", [("patient", "/api/patients/batch"), ("therapist", "/api/therapists/batch")])
def test_openapi_document_lists_the_batch_answers(client_of, service, path):
    document = client_of[service].get("/api/openapi.json").get_json()

    answers = document["paths"][path]["post"]["responses"]
    assert {"200", "201", "204", "401", "409", "413", "422"} <= set(answers)
    assert "application/problem+json" in answers["409"]["content"]
    stored = document["paths"]["/api/batches/{key}"]["get"]["responses"]
    assert {"200", "401", "404"} <= set(stored)
