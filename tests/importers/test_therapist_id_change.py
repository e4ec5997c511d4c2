"""When the scraper's id changes (SPEC §7.2.6): the folder importer and batch requests find the
therapist by practice identity, so it keeps our id, instead of being deleted and created again."""
from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import API_TOKENS, AUTH
from flask_migrate import upgrade
from helpers import assert_problem, pointers
from sqlalchemy import create_engine, text

from shared.config import sqlalchemy_url
from shared.devdb import drop_database, ensure_database
from shared.extensions import db
from therapist_service import create_app
from therapist_service.services import practice_identity

from .support import drop, history, imports_of, scrape, the_therapist, therapist, therapists, wait_for_import

ZERO = {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0, "ignored_stale": 0, "failed": 0}
WEEK_1, WEEK_2, WEEK_3 = "2025-07-02T03:13:24", "2025-07-09T03:13:24", "2025-07-16T03:13:24"
NAMES = ("Thomas", "Zeevaert", "Theaterstraße")


def counts(**nonzero: int) -> dict[str, int]:
    return {**ZERO, **nonzero}


def practice(external_id: str, status: str = "new", last_modified: str = WEEK_1, *, first_name: str = "Thomas",
             last_name: str = "Zeevaert", street: str = "Theaterstraße", house_number: str = "44",
             phone: str = "0241 4001234") -> dict:
    """A scraped therapist at a practice of our choosing: equal arguments, equal practice identity."""
    item = therapist(external_id, status, last_modified)
    item["basic_info"].update(first_name=first_name, last_name=last_name)
    item["location"].update(street=street, house_number=house_number, postcode="52062")
    item["contact"]["phone"] = phone
    return item


def import_file(folder, client, *entries: dict) -> dict:
    after = max((r["id"] for r in imports_of(client, "52074.json")), default=0)
    drop(folder, "52074.json", scrape(*entries))
    record = wait_for_import(client, "52074.json", after=after)
    assert record["errors"] == [], record
    return record


def warnings_of(record: dict, kind: str) -> list[dict]:
    return [w for w in record["warnings"] if w["kind"] == kind]


def assert_names_nothing(warning: dict) -> None:
    """On-call reads import records: ids, never names or addresses."""
    assert not any(word in warning["detail"] for word in NAMES), warning["detail"]


# ---- the file sequences a scraper produces when an id changes ------------------------------------

@pytest.mark.parametrize("old_entry_first", [True, False], ids=["deleted-entry-first", "new-entry-first"])
def test_id_changed_within_one_file_keeps_our_id_and_the_old_ids_deletion_changes_nothing(
        inbox, client, old_entry_first):
    first = import_file(inbox, client, practice("praxis67"))
    before = the_therapist(client, "praxis67")
    entries = [practice("praxis67", "deleted", WEEK_2),
               practice("p-0815", "new", WEEK_2, phone="0241 999999")]

    record = import_file(inbox, client, *(entries if old_entry_first else entries[::-1]))

    assert record["counts"] == counts(updated=1, unchanged=1)
    after = the_therapist(client, "p-0815")
    assert after["id"] == before["id"]
    assert (after["external_id"], after["previous_external_ids"]) == ("p-0815", ["praxis67"])
    assert after["deleted_at"] is None and after["contact"]["phone"] == "0241 999999"
    versions = history(client, before["id"])
    assert [(v["version"], v["actor"]) for v in versions] == [(2, f"import:{record['id']}"),
                                                             (1, f"import:{first['id']}")]
    assert versions[0]["data"]["previous_external_ids"] == ["praxis67"]
    assert versions[0]["data"]["deleted_at"] is None
    [warning] = warnings_of(record, "id-changed")
    assert warning["ref"] == "p-0815"
    assert all(part in warning["detail"] for part in ("praxis67", "p-0815", f"therapist {before['id']}"))
    assert_names_nothing(warning)


def test_id_changed_across_two_weeks_restores_the_deleted_therapist_under_its_new_id(inbox, client):
    import_file(inbox, client, practice("praxis67"))
    original = the_therapist(client, "praxis67")
    week_one = import_file(inbox, client, practice("praxis67", "deleted", WEEK_2))
    assert week_one["counts"] == counts(deleted=1)

    # another scraper's spelling of the same practice: case, spaces, ß
    week_two = import_file(inbox, client, practice("p-0815", "new", WEEK_3, first_name=" THOMAS ",
                                                   street="THEATERSTRASSE"))

    assert week_two["counts"] == counts(updated=1)
    restored = the_therapist(client, "p-0815")
    assert restored["id"] == original["id"]
    assert (restored["deleted_at"], restored["previous_external_ids"]) == (None, ["praxis67"])
    assert client.get(f"/api/therapists/{original['id']}", headers=AUTH).status_code == 200
    assert [(v["version"], v["data"]["external_id"], v["data"]["deleted_at"] is None)
            for v in history(client, original["id"])] == [(3, "p-0815", True), (2, "praxis67", False),
                                                          (1, "praxis67", True)]
    [warning] = warnings_of(week_two, "id-changed")
    assert all(part in warning["detail"] for part in ("praxis67", "p-0815", f"therapist {original['id']}"))
    assert_names_nothing(warning)


def test_the_old_id_finds_the_therapist(inbox, client):
    import_file(inbox, client, practice("praxis67"))
    import_file(inbox, client, practice("praxis67", "deleted", WEEK_2), practice("p-0815", "new", WEEK_2))
    import_file(inbox, client, practice("p-0815", "modified", WEEK_3), practice("p-4711", "new", WEEK_3,
                                                                                 last_name="Schmitz"))

    found = therapists(client, "praxis67")
    assert [(t["external_id"], t["previous_external_ids"]) for t in found] == [("p-0815", ["praxis67"])]
    assert therapists(client, "p-0815") == found
    assert therapists(client, "unknown-id") == []


def test_entry_matching_two_stored_therapists_is_created_new_with_a_possible_duplicate_warning(inbox, client):
    import_file(inbox, client, practice("praxis67"), practice("praxis68", phone="0241 5550000"))
    twins = [the_therapist(client, "praxis67")["id"], the_therapist(client, "praxis68")["id"]]

    record = import_file(inbox, client, practice("praxis67", "deleted", WEEK_2),
                         practice("praxis68", "deleted", WEEK_2), practice("p-0815", "new", WEEK_2))

    assert record["counts"] == counts(created=1, deleted=2)
    created = the_therapist(client, "p-0815")
    assert created["id"] not in twins and created["previous_external_ids"] == []
    [warning] = warnings_of(record, "possible-duplicate")
    assert warning["ref"] == "p-0815"
    assert all(f"therapist {i}" in warning["detail"] for i in twins)
    assert all(i in warning["detail"] for i in ("praxis67", "praxis68", "p-0815"))
    assert_names_nothing(warning)
    assert warnings_of(record, "id-changed") == []


@pytest.mark.parametrize("old_entry", ["unchanged", None], ids=["file-keeps-it", "file-does-not-mention-it"])
def test_match_with_an_active_therapist_the_file_does_not_mark_deleted_is_a_possible_duplicate(
        inbox, client, old_entry):
    import_file(inbox, client, practice("praxis67"))
    live = the_therapist(client, "praxis67")

    entries = [practice("p-0815", "new", WEEK_2)] + ([practice("praxis67", old_entry, WEEK_2)] if old_entry else [])
    record = import_file(inbox, client, *entries)

    assert record["counts"] == counts(created=1, unchanged=1 if old_entry else 0)
    assert the_therapist(client, "p-0815")["id"] != live["id"]
    assert the_therapist(client, "praxis67") == live
    [warning] = warnings_of(record, "possible-duplicate")
    assert f"therapist {live['id']}" in warning["detail"] and "praxis67" in warning["detail"]


def test_unknown_id_without_a_match_is_created_as_before(inbox, client):
    import_file(inbox, client, practice("praxis67"))

    record = import_file(inbox, client, practice("praxis67", "deleted", WEEK_2),
                         practice("p-0815", "new", WEEK_2, house_number="46"),
                         practice("p-4711", "new", WEEK_2, last_name="Schmitz"))

    assert record["counts"] == counts(created=2, deleted=1)
    assert record["warnings"] == []
    assert [the_therapist(client, i)["previous_external_ids"] for i in ("p-0815", "p-4711")] == [[], []]
    assert the_therapist(client, "praxis67")["deleted_at"] is not None


def test_two_new_ids_claiming_one_deleted_therapist_are_both_created_with_a_warning(inbox, client):
    import_file(inbox, client, practice("praxis67"))
    import_file(inbox, client, practice("praxis67", "deleted", WEEK_2))

    record = import_file(inbox, client, practice("p-0815", "new", WEEK_3), practice("p-4711", "new", WEEK_3))

    assert record["counts"] == counts(created=2)
    assert sorted(w["ref"] for w in warnings_of(record, "possible-duplicate")) == ["p-0815", "p-4711"]
    assert the_therapist(client, "praxis67")["deleted_at"] is not None


def test_id_change_after_a_flush_of_a_long_file_is_written(inbox, client, monkeypatch):
    """Therapists loaded at the start stay in the session until written, even past a flush."""
    from therapist_service import services

    monkeypatch.setattr(services, "FLUSH_EVERY", 2)
    import_file(inbox, client, practice("praxis67"), practice("praxis68", last_name="Schmitz"))
    old = the_therapist(client, "praxis67")

    record = import_file(inbox, client, practice("praxis67", "deleted", WEEK_2),
                         *(practice(f"neu{n}", "new", WEEK_2, last_name=f"Krause{n}") for n in range(3)),
                         practice("praxis68", "modified", WEEK_2, last_name="Schmitz", phone="0241 1"),
                         practice("p-0815", "new", WEEK_2))

    assert record["counts"] == counts(created=3, updated=2, unchanged=1)
    assert the_therapist(client, "p-0815")["id"] == old["id"]
    assert the_therapist(client, "p-0815")["version"] == 2
    assert the_therapist(client, "praxis68")["contact"]["phone"] == "0241 1"


def test_id_change_is_one_updated_event_not_a_deletion_and_a_creation(inbox, client, admin_engine):
    import_file(inbox, client, practice("praxis67"))
    original = the_therapist(client, "praxis67")

    import_file(inbox, client, practice("praxis67", "deleted", WEEK_2), practice("p-0815", "new", WEEK_2))

    with admin_engine.connect() as conn:
        rows = conn.execute(text("SELECT type, record_id, sequence, document FROM therapist_service.event_outbox "
                                 "ORDER BY id")).all()
    assert [(row.type, row.record_id, row.sequence) for row in rows] == [
        ("de.curavani.therapist.created", str(original["id"]), 1),
        ("de.curavani.therapist.updated", str(original["id"]), 2)]
    data = json.loads(rows[-1].document)["data"]
    assert (data["id"], data["external_id"], data["previous_external_ids"]) == (original["id"], "p-0815", ["praxis67"])


# ---- undoing a wrong take-over (docs/operations.md runbook) -----------------------------------------

def test_patch_of_external_id_undoes_a_wrong_take_over(inbox, client):
    import_file(inbox, client, practice("praxis67"))
    import_file(inbox, client, practice("praxis67", "deleted", WEEK_2), practice("p-0815", "new", WEEK_2))
    merged = the_therapist(client, "p-0815")

    patched = client.patch(f"/api/therapists/{merged['id']}", json={"external_id": "praxis67"}, headers=AUTH)
    assert patched.status_code == 200, patched.get_data(as_text=True)
    body = {k: v for k, v in practice("p-0815", "new", WEEK_2).items() if k not in ("id", "status")}
    created = client.post("/api/therapists", json={**body, "external_id": "p-0815"}, headers=AUTH)
    assert created.status_code == 201, created.get_data(as_text=True)
    record = import_file(inbox, client, practice("p-0815", "modified", WEEK_3, phone="0241 222"))

    assert (patched.get_json()["external_id"], patched.get_json()["previous_external_ids"]) == ("praxis67", [])
    assert record["counts"] == counts(updated=1) and record["warnings"] == []
    assert [t["id"] for t in therapists(client, "p-0815")] == [created.get_json()["id"]]
    assert the_therapist(client, "praxis67")["id"] == merged["id"]


def test_previous_external_ids_are_read_only(therapist_client):
    body = {k: v for k, v in practice("praxis67").items() if k not in ("id", "status")}
    created = therapist_client.post("/api/therapists", json={**body, "external_id": "praxis67"}, headers=AUTH)
    path = f"/api/therapists/{created.get_json()['id']}"

    posted = therapist_client.post("/api/therapists", json={**body, "previous_external_ids": ["x"]}, headers=AUTH)
    patched = therapist_client.patch(path, json={"previous_external_ids": ["x"]}, headers=AUTH)

    for response in (posted, patched):
        assert_problem(response, 422)
        assert pointers(response) == ["/previous_external_ids"]
    assert therapist_client.get(path, headers=AUTH).get_json()["previous_external_ids"] == []


# ---- batch requests follow the same rule -------------------------------------------------------------

def batch_item(external_id: str, last_modified: str = WEEK_1, **options) -> dict:
    item = {k: v for k, v in practice(external_id, last_modified=last_modified, **options).items()
            if k not in ("id", "status")}
    return {**item, "external_id": external_id}


def send(client, *items, mode: str = "batch") -> list[dict]:
    response = client.post("/api/therapists/batch", json={"items": list(items), "mode": mode}, headers=AUTH)
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return response.get_json()["results"]


def test_batch_item_with_an_unknown_id_takes_over_the_deleted_therapist(therapist_client):
    [created] = send(therapist_client, batch_item("praxis67"))
    send(therapist_client, {"op": "delete", "id": created["id"]})

    [result] = send(therapist_client, batch_item("p-0815", WEEK_2))

    assert (result["id"], result["action"]) == (created["id"], "updated")
    stored = therapist_client.get(f"/api/therapists/{created['id']}", headers=AUTH).get_json()
    assert (stored["external_id"], stored["previous_external_ids"], stored["deleted_at"]) == (
        "p-0815", ["praxis67"], None)
    assert [t["id"] for t in therapist_client.get("/api/therapists?external_id=praxis67",
                                                  headers=AUTH).get_json()] == [created["id"]]


def test_batch_item_matching_a_live_therapist_is_created_new(therapist_client):
    [live] = send(therapist_client, batch_item("praxis67"))

    [result] = send(therapist_client, batch_item("p-0815", WEEK_2))

    assert result["action"] == "created" and result["id"] != live["id"]
    stored = therapist_client.get(f"/api/therapists/{live['id']}", headers=AUTH).get_json()
    assert (stored["external_id"], stored["previous_external_ids"]) == ("praxis67", [])


def test_racing_batches_with_two_new_ids_take_over_the_deleted_therapist_once(make_app):
    """The candidate is locked: the second request sees it taken (and live) and creates its own."""
    app = make_app("therapist")
    setup = app.test_client()
    [created] = send(setup, batch_item("praxis67"))
    send(setup, {"op": "delete", "id": created["id"]})
    start = threading.Barrier(2)

    def claim(external_id: str) -> dict:
        client = app.test_client()
        start.wait()
        [result] = send(client, batch_item(external_id, WEEK_2))
        return result

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(claim, ["p-0815", "p-4711"]))

    assert sorted(r["action"] for r in results) == ["created", "updated"]
    [taker] = [r for r in results if r["action"] == "updated"]
    assert taker["id"] == created["id"]
    stored = setup.get(f"/api/therapists/{created['id']}", headers=AUTH).get_json()
    assert stored["previous_external_ids"] == ["praxis67"] and stored["version"] == 3


# ---- the migration ----------------------------------------------------------------------------------

def test_migration_gives_stored_therapists_their_practice_identity(database_url):
    """Therapists stored before the columns existed are found by practice identity afterwards."""
    name = f"curavani_identity_{uuid.uuid4().hex[:8]}"
    url = ensure_database(database_url, name)
    app = create_app({"DATABASE_URL": url, "API_TOKENS": API_TOKENS, "IMPORTS_ENABLED": False})
    engine = create_engine(sqlalchemy_url(url))
    groups = {"basic_info": {"first_name": "Thomas ", "last_name": "Zeevaert"},
              "location": {"street": "Theaterstraße", "house_number": "44", "postcode": "52062"}}
    try:
        with app.app_context():
            upgrade(revision="e10a00000002")
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO therapist_service.therapists (id, version, created_at, updated_at, external_id, "
                    "basic_info, location, contact, professional_info, availability) VALUES "
                    "(1, 1, now(), now(), 'praxis67', CAST(:basic AS jsonb), CAST(:location AS jsonb), '{}', '{}', '{}'), "
                    "(2, 1, now(), now(), 'praxis68', CAST(:basic AS jsonb), '{}', '{}', '{}', '{}')"),
                    {"basic": json.dumps(groups["basic_info"]), "location": json.dumps(groups["location"])})
            upgrade()
            db.engine.dispose()
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT id, practice_identity, previous_external_ids "
                                       "FROM therapist_service.therapists ORDER BY id")).all()
        assert [tuple(row) for row in stored] == [(1, practice_identity(groups), []), (2, None, [])]
    finally:
        engine.dispose()
        drop_database(database_url, name)
