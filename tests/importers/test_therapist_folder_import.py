"""The therapist folder importer end to end (SPEC §7.2): files dropped into a real folder, picked up
by the running background importer (watchdog, settle time, rescans), checked through the REST API."""
from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from conftest import AUTH

from .support import (
    SAMPLE,
    all_therapists,
    drop,
    drop_barrier,
    history,
    imports_of,
    sample_document,
    scrape,
    the_therapist,
    therapist,
    therapists,
    wait_for_import,
)

ZERO = {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0, "ignored_stale": 0, "failed": 0}
T1, T2, T3 = "2025-07-01T10:00:00", "2025-07-02T10:00:00", "2025-07-03T10:00:00"


def counts(**nonzero: int) -> dict[str, int]:
    return {**ZERO, **nonzero}


def import_file(folder, client, document, name: str = "52074.json") -> dict:
    """Drop `document` as `name` and wait for its (new) import record."""
    after = max((r["id"] for r in imports_of(client, name)), default=0)
    drop(folder, name, document)
    return wait_for_import(client, name, after=after)


def create_by_api(client, item: dict) -> dict:
    body = {key: value for key, value in item.items() if key not in ("id", "status")}
    response = client.post("/api/therapists", json={**body, "external_id": item["id"]}, headers=AUTH)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


# ---- the sample, as the scraper delivers it -------------------------------------------------------

def test_sample_dropped_into_the_folder_is_imported_by_the_running_importer(inbox, client):
    document = sample_document()
    drop(inbox, "52074.json", SAMPLE.read_bytes())

    record = wait_for_import(client)

    assert (record["status"], record["source"], record["name"], record["attempts"]) == (
        "succeeded", "folder", "52074.json", 1)
    assert record["size"] == SAMPLE.stat().st_size
    assert record["errors"] == []
    # On an empty database new, modified and unchanged entries create; the deleted one is not known.
    statuses = Counter(t["status"] for t in document["therapists"])
    assert record["counts"] == counts(created=statuses["new"] + statuses["modified"] + statuses["unchanged"],
                                      unchanged=statuses["deleted"])
    assert [(w["kind"], w["ref"]) for w in record["warnings"]] == [("not-found", "praxis71")]
    for item in document["therapists"]:
        found = therapists(client, item["id"])
        if item["status"] == "deleted":
            assert found == []
            continue
        [stored] = found
        for group in ("basic_info", "location", "contact"):
            assert stored[group] == item[group]
        [version] = history(client, stored["id"])
        assert (version["source"], version["actor"]) == ("import", f"import:{record['id']}")


def test_same_file_copied_in_again_is_not_imported_twice(inbox, client):
    target = drop(inbox, "52074.json", SAMPLE.read_bytes())
    first = wait_for_import(client)
    first_mtime = target.stat().st_mtime_ns
    versions = {t["id"]: t["version"] for t in all_therapists(client)}

    drop(inbox, "52074.json", SAMPLE.read_bytes())
    assert target.stat().st_mtime_ns != first_mtime
    drop_barrier(inbox, client)

    assert [r["id"] for r in imports_of(client, "52074.json")] == [first["id"]]
    assert {t["id"]: t["version"] for t in all_therapists(client)} == versions


def test_changed_file_is_imported_again_and_only_the_changed_therapist_gets_a_version(inbox, client):
    first = import_file(inbox, client, SAMPLE.read_bytes())
    document = sample_document()
    changed = document["therapists"][1]
    changed.update(status="modified", last_modified="2025-07-09T03:13:24")
    changed["location"]["city"] = "Würselen"

    second = import_file(inbox, client, document)

    assert second["id"] != first["id"]
    assert second["status"] == "succeeded"
    assert second["counts"] == counts(updated=1, unchanged=4)
    for item in document["therapists"]:
        if item["status"] == "deleted":
            continue
        stored = the_therapist(client, item["id"])
        actors = [v["actor"] for v in history(client, stored["id"])]
        if item is changed:
            assert stored["location"]["city"] == "Würselen"
            assert actors == [f"import:{second['id']}", f"import:{first['id']}"]
        else:
            assert actors == [f"import:{first['id']}"]


# ---- SPEC §7.2.3, status by status ----------------------------------------------------------------

def test_new_and_modified_entries_create_missing_therapists_and_update_known_ones(inbox, client):
    known_new = create_by_api(client, therapist("known-new", last_modified=T1))
    known_modified = create_by_api(client, therapist("known-modified", last_modified=T1))
    city = {"postcode": "52062", "city": "Aachen-Mitte"}

    record = import_file(inbox, client, scrape(
        therapist("fresh-new", "new", T2), therapist("fresh-modified", "modified", T2),
        therapist("known-new", "new", T2, location=city), therapist("known-modified", "modified", T2, location=city)))

    assert record["counts"] == counts(created=2, updated=2)
    assert record["warnings"] == []
    for external_id in ("fresh-new", "fresh-modified"):
        assert the_therapist(client, external_id)["version"] == 1
    for before in (known_new, known_modified):
        stored = the_therapist(client, before["external_id"])
        assert (stored["id"], stored["version"], stored["location"]["city"]) == (before["id"], 2, "Aachen-Mitte")
        assert stored["last_modified"].startswith("2025-07-02T10:00:00")


def test_unchanged_entry_creates_a_missing_therapist(inbox, client):
    record = import_file(inbox, client, scrape(therapist("only-in-file", "unchanged", T2)))

    assert record["counts"] == counts(created=1)
    stored = the_therapist(client, "only-in-file")
    assert [(v["source"], v["actor"]) for v in history(client, stored["id"])] == [("import", f"import:{record['id']}")]


def test_unchanged_entry_with_the_stored_content_writes_no_version(inbox, client):
    before = create_by_api(client, therapist("same", last_modified=T1))

    record = import_file(inbox, client, scrape(therapist("same", "unchanged", T2)))

    assert record["counts"] == counts(unchanged=1)
    assert record["warnings"] == []
    assert the_therapist(client, "same")["version"] == before["version"] == 1


def test_unchanged_entry_with_other_content_updates_it_with_a_warning(inbox, client):
    create_by_api(client, therapist("drifted", last_modified=T1))

    record = import_file(inbox, client, scrape(
        therapist("drifted", "unchanged", T2, availability={"accepts_new_patients": False})))

    assert record["status"] == "succeeded"
    assert record["counts"] == counts(updated=1)
    [warning] = record["warnings"]
    assert (warning["kind"], warning["index"], warning["ref"], warning["pointer"]) == (
        "content-differs", 0, "drifted", "/therapists/0")
    stored = the_therapist(client, "drifted")
    assert (stored["version"], stored["availability"]["accepts_new_patients"]) == (2, False)


@pytest.mark.parametrize("restoring_status", ["new", "modified"])
def test_deleted_entry_soft_deletes_and_a_later_new_or_modified_restores(inbox, client, restoring_status):
    first = import_file(inbox, client, scrape(therapist("leaving", "new", T1)))
    stored = the_therapist(client, "leaving")

    deleted = import_file(inbox, client, scrape(therapist("leaving", "deleted", T2)))

    assert deleted["counts"] == counts(deleted=1)
    assert client.get(f"/api/therapists/{stored['id']}", headers=AUTH).status_code == 410
    assert therapists(client, "leaving") == []

    restored = import_file(inbox, client, scrape(therapist("leaving", restoring_status, T3)))

    assert restored["counts"] == counts(updated=1)
    response = client.get(f"/api/therapists/{stored['id']}", headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["deleted_at"] is None
    assert [(v["version"], v["actor"]) for v in history(client, stored["id"])] == [
        (3, f"import:{restored['id']}"), (2, f"import:{deleted['id']}"), (1, f"import:{first['id']}")]


def reversed_everywhere(value):
    """The same content with every object's keys and every list in reverse order."""
    if isinstance(value, dict):
        return {key: reversed_everywhere(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_everywhere(item) for item in reversed(value)]
    return value


def test_comparison_ignores_status_last_modified_key_order_and_list_order(inbox, client):
    a = therapist("a", "new", T1,
                  professional_info={"license": "PP", "therapy_methods": ["Verhaltenstherapie", "Systemische Therapie"],
                                     "languages": ["Deutsch", "Englisch", "Türkisch"],
                                     "insurance": ["gesetzlich", "privat"]},
                  availability={"telephone_hours": {"montag": ["08:00-09:00", "14:00-15:00"],
                                                    "freitag": ["10:00-11:00"]},
                                "accepts_new_patients": True, "waiting_time_weeks": 4})
    b = therapist("b", "new", T1)
    import_file(inbox, client, scrape(a, b))
    versions = {t["external_id"]: t["version"] for t in all_therapists(client)}

    record = import_file(inbox, client, scrape(
        {**reversed_everywhere(a), "status": "unchanged", "last_modified": T3},
        {**reversed_everywhere(b), "status": "modified", "last_modified": T3}))

    assert record["status"] == "succeeded"
    assert record["counts"] == counts(unchanged=2)
    assert record["warnings"] == []
    assert {t["external_id"]: t["version"] for t in all_therapists(client)} == versions == {"a": 1, "b": 1}


def test_entry_older_than_the_stored_one_is_ignored_as_stale(inbox, client):
    create_by_api(client, therapist("fresh", last_modified=T2))

    record = import_file(inbox, client, scrape(
        therapist("fresh", "modified", T1, location={"postcode": "52062", "city": "Stolberg"})))

    assert record["status"] == "succeeded"
    assert record["counts"] == counts(ignored_stale=1)
    stored = the_therapist(client, "fresh")
    assert (stored["version"], stored["location"]["city"]) == (1, "Aachen")
    assert stored["last_modified"].startswith("2025-07-02T10:00:00")


# ---- partial files and warnings -------------------------------------------------------------------

def test_partial_file_imports_valid_therapists_and_reports_invalid_ones(inbox, client, smtp_server):
    invalid = therapist("broken", "new", T1)
    del invalid["basic_info"]["first_name"]
    invalid["location"]["postcode"] = "520"

    record = import_file(inbox, client, scrape(therapist("good-1", "new", T1), invalid, therapist("good-2", "new", T1)))

    assert record["status"] == "partial"
    assert record["counts"] == counts(created=2, failed=1)
    assert sorted((e["index"], e["ref"], e["pointer"], e["kind"]) for e in record["errors"]) == [
        (1, "broken", "/therapists/1/basic_info/first_name", "validation"),
        (1, "broken", "/therapists/1/location/postcode", "validation")]
    assert all(e["detail"] for e in record["errors"])
    assert [t["external_id"] for t in all_therapists(client)] == ["good-1", "good-2"]
    [mail] = smtp_server.wait_for(1)
    assert mail["Subject"] == f"[therapist_service] import partial: #{record['id']}"


def test_total_therapists_not_matching_the_list_gives_a_warning(inbox, client):
    record = import_file(inbox, client, scrape(therapist("one", "new", T1), therapist("two", "new", T1), total=3))

    assert record["status"] == "succeeded"
    assert record["counts"] == counts(created=2)
    [warning] = record["warnings"]
    assert (warning["kind"], warning["pointer"]) == ("count-mismatch", "/metadata/total_therapists")
    assert "3" in warning["detail"] and "2" in warning["detail"]


# ---- how files arrive -----------------------------------------------------------------------------

def test_file_written_slowly_is_read_only_once_complete(inbox, start_importer):
    app = start_importer(THERAPIST_IMPORT_SETTLE_SECONDS=1.0)
    client = app.test_client()
    payload = SAMPLE.read_bytes()
    pieces = [payload[i * len(payload) // 5:(i + 1) * len(payload) // 5] for i in range(5)]

    with open(inbox / "52074.json", "wb") as handle:  # pauses shorter than the settle time
        for piece in pieces:
            handle.write(piece)
            handle.flush()
            time.sleep(0.3)

    record = wait_for_import(client)
    assert record["status"] == "succeeded"
    assert record["counts"]["created"] == 4
    assert len(imports_of(client, "52074.json")) == 1


def test_file_renamed_into_the_folder_is_imported(inbox, client):
    temporary = inbox / "x.tmp"
    temporary.write_bytes(SAMPLE.read_bytes())
    os.rename(temporary, inbox / "52074.json")

    record = wait_for_import(client)

    assert record["status"] == "succeeded"
    assert [r["name"] for r in imports_of(client, "x.tmp")] == []


def test_file_in_a_subfolder_is_imported_under_its_relative_name(inbox, client):
    drop(inbox, "aachen/52074.json", SAMPLE.read_bytes())

    record = wait_for_import(client, "aachen/52074.json")

    assert record["status"] == "succeeded"
    assert record["counts"]["created"] == 4


def test_a_deleted_entry_for_a_therapist_deleted_already_is_remembered_by_its_fingerprint(
        inbox, client, admin_engine):
    """The entry is skipped next time without being loaded, even when the stored fingerprint was
    made another way (the fingerprint's JSON changed in issue 14)."""
    from sqlalchemy import text

    from therapist_service.importer import fingerprint

    import_file(inbox, client, scrape(therapist("gone", "new", T1)))
    import_file(inbox, client, scrape(therapist("gone", "deleted", T2)))
    with admin_engine.begin() as conn:
        conn.execute(text("UPDATE therapist_service.therapists SET import_fingerprint = 'made another way'"))

    entry = therapist("gone", "deleted", T3)
    record = import_file(inbox, client, scrape(entry))

    assert record["counts"] == counts(unchanged=1)
    with admin_engine.connect() as conn:
        stored = conn.execute(text("SELECT import_fingerprint FROM therapist_service.therapists")).scalar_one()
    assert stored == fingerprint(entry)
