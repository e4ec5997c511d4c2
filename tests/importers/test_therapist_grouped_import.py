"""Small files read ahead in one pass are imported together (issue 14): one lookup and one write per
table for several files, in one transaction. Each file still has its own record, counts, errors,
actor and attempt, and the outcome is the one importing them one at a time gives; files that could
change what another one does go one at a time."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from .support import drop, encode, scrape, therapist
from .test_therapist_id_change import WEEK_1, WEEK_2, counts, practice


@pytest.fixture
def groups(monkeypatch) -> list[tuple[int, bool | None]]:
    """Every call of `apply_group`: how many files it was given, and whether it took them (None:
    it raised)."""
    from therapist_service.importer import TherapistFileHandler

    calls: list[tuple[int, bool | None]] = []
    real = TherapistFileHandler.apply_group

    def recorded(self, files):
        calls.append((len(files), None))
        outcomes = real(self, files)
        calls[-1] = (len(files), outcomes is not None)
        return outcomes

    monkeypatch.setattr(TherapistFileHandler, "apply_group", recorded)
    return calls


@pytest.fixture
def run_pass(inbox, make_app, tmp_path):
    """One import pass over what is in the folder, in the foreground; returns its summary. After
    each pass, nothing read ahead is left with the handler."""
    app = make_app("therapist", IMPORTS_ENABLED=False, THERAPIST_IMPORT_DIR=str(inbox),
                   THERAPIST_IMPORT_SETTLE_SECONDS=0, ALERT_OUTBOX_DIR=str(tmp_path / "outbox"))

    def run():
        with app.app_context():
            extension = app.extensions["imports"]
            summary = extension.run_pass(extension.source.list())
        assert len(extension.spec.handler._ahead) == 0  # the files read ahead and not imported are let go of
        return summary

    return run


def records(admin_engine) -> dict[str, dict[str, Any]]:
    with admin_engine.connect() as conn:
        rows = conn.execute(text("SELECT id, name, status, attempts, counts, errors, warnings "
                                 "FROM therapist_service.imports ORDER BY id")).mappings().all()
    return {row["name"]: dict(row) for row in rows}


def stored(admin_engine) -> dict[str, tuple[str, int, str]]:
    """external id → (last_modified, version, actor of the latest version)."""
    with admin_engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.external_id, t.last_modified, t.version, v.actor FROM therapist_service.therapists t "
            "JOIN therapist_service.therapist_versions v ON v.record_id = t.id AND v.version = t.version")).all()
    return {external_id: (last_modified.isoformat()[:19], version, actor)
            for external_id, last_modified, version, actor in rows}


def test_small_files_go_in_together_each_with_its_own_record_counts_errors_and_actor(
        inbox, run_pass, groups, admin_engine):
    bad = therapist("praxis32")
    bad["location"]["postcode"] = "5206"
    drop(inbox, "52071.json", scrape(therapist("praxis11")))
    drop(inbox, "52072.json", scrape(therapist("praxis21"), therapist("praxis22")))
    drop(inbox, "52073.json", scrape(therapist("praxis31"), bad, therapist("praxis33")))
    drop(inbox, "52074.json", scrape(therapist("praxis41"), total=3))

    summary = run_pass()

    assert groups == [(3, True)]  # the first file alone (nothing was read ahead yet), then three together
    assert summary.by_status == {"succeeded": 3, "partial": 1}
    found = records(admin_engine)
    assert {name: (r["status"], r["attempts"]) for name, r in found.items()} == {
        "52071.json": ("succeeded", 1), "52072.json": ("succeeded", 1), "52073.json": ("partial", 1),
        "52074.json": ("succeeded", 1)}
    assert [found[name]["counts"] for name in sorted(found)] == [
        counts(created=1), counts(created=2), counts(created=2, failed=1), counts(created=1)]
    assert [(e["index"], e["ref"], e["pointer"]) for e in found["52073.json"]["errors"]] == [
        (1, "praxis32", "/therapists/1/location/postcode")]
    assert [w["kind"] for w in found["52074.json"]["warnings"]] == ["count-mismatch"]
    actors = {external_id: actor for external_id, (_, _, actor) in stored(admin_engine).items()}
    assert actors == {external_id: f"import:{found[name]['id']}" for name, ids in (
        ("52071.json", ["praxis11"]), ("52072.json", ["praxis21", "praxis22"]),
        ("52073.json", ["praxis31", "praxis33"]), ("52074.json", ["praxis41"])) for external_id in ids}
    with admin_engine.connect() as conn:
        events = conn.execute(text("SELECT e.type, e.document::jsonb->>'actor', t.external_id "
                                   "FROM therapist_service.event_outbox e JOIN therapist_service.therapists t "
                                   "ON t.id::text = e.record_id")).all()
    assert sorted(events) == sorted(("de.curavani.therapist.created", actor, external_id)
                                    for external_id, actor in actors.items())


def test_files_naming_one_id_go_one_at_a_time_and_in_their_order(inbox, run_pass, groups, admin_engine):
    drop(inbox, "52071.json", scrape(therapist("praxis1")))
    drop(inbox, "52072.json", scrape(therapist("praxis2", last_modified=WEEK_1)))
    drop(inbox, "52073.json", scrape(therapist("praxis2", "modified", WEEK_2, contact={"phone": "0241 1"})))

    run_pass()

    assert groups == [(2, False)]
    found = records(admin_engine)
    assert [found[name]["counts"] for name in sorted(found)] == [
        counts(created=1), counts(created=1), counts(updated=1)]
    assert stored(admin_engine)["praxis2"][:2] == (WEEK_2, 2)


def test_a_practice_identity_in_two_files_is_decided_in_their_order(inbox, run_pass, groups, admin_engine):
    """The second file's new id looks like the first file's new therapist (SPEC §7.2.6): one at a
    time, the second file sees the first one's therapist and warns of a possible duplicate."""
    drop(inbox, "52071.json", scrape(therapist("praxis1")))
    drop(inbox, "52072.json", scrape(practice("p-1")))
    drop(inbox, "52073.json", scrape(practice("p-2")))

    run_pass()

    assert groups == [(2, False)]
    found = records(admin_engine)
    assert found["52072.json"]["warnings"] == []
    assert [w["kind"] for w in found["52073.json"]["warnings"]] == ["possible-duplicate"]


def test_a_file_of_the_group_that_cannot_be_read_fails_alone(inbox, run_pass, groups, admin_engine):
    unreadable = encode(scrape(therapist("praxis21"))).replace(b'"Theaterstra', b'"Theater\xffstra', 1)
    drop(inbox, "52071.json", scrape(therapist("praxis11")))
    drop(inbox, "52072.json", unreadable)
    drop(inbox, "52073.json", scrape(therapist("praxis31")))

    run_pass()

    assert groups == [(2, False)]  # the file that cannot be read was not read ahead as a scrape
    found = records(admin_engine)
    assert {name: r["status"] for name, r in found.items()} == {
        "52071.json": "succeeded", "52072.json": "failed", "52073.json": "succeeded"}
    assert [e["kind"] for e in found["52072.json"]["errors"]] == ["not-utf8"]
    assert set(stored(admin_engine)) == {"praxis11", "praxis31"}


def test_a_file_whose_every_entry_is_invalid_fails_while_the_others_of_its_group_are_written(
        inbox, run_pass, groups, admin_engine):
    invalid = therapist("praxis21", status="renamed")
    drop(inbox, "52071.json", scrape(therapist("praxis11")))
    drop(inbox, "52072.json", scrape(invalid))
    drop(inbox, "52073.json", scrape(therapist("praxis31")))

    summary = run_pass()

    assert groups == [(2, True)]
    assert summary.by_status == {"succeeded": 2, "failed": 1}
    found = records(admin_engine)
    assert (found["52072.json"]["status"], found["52072.json"]["counts"]) == ("failed", counts(failed=1))
    assert [e["pointer"] for e in found["52072.json"]["errors"]] == ["/therapists/0/status"]
    assert set(stored(admin_engine)) == {"praxis11", "praxis31"}


def test_a_therapist_created_meanwhile_undoes_the_group_and_each_file_goes_again_alone(
        inbox, run_pass, groups, admin_engine, monkeypatch):
    """Another writer commits one of the group's new ids between the lookup and the write: the
    group's write clashes on the unique index, nothing of it stays, and each file is imported again
    on its own — where that therapist is found and updated."""
    from therapist_service import services

    real = services.identities_in_use
    sneaked_in: list[bool] = []

    def and_meanwhile(identities):
        if len(identities) > 1 and not sneaked_in:  # the group's lookup, not the first file's
            sneaked_in.append(True)
            with admin_engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO therapist_service.therapists (id, external_id, version, created_at, updated_at, "
                    "basic_info, location, contact, professional_info, availability, previous_external_ids) "
                    "VALUES (nextval('therapist_service.therapists_id_seq'), 'praxis31', 1, now(), now(), "
                    "'{\"first_name\": \"A\", \"last_name\": \"B\"}', '{}', '{}', '{}', '{}', '{}')"))
        return real(identities)

    drop(inbox, "52071.json", scrape(therapist("praxis11")))
    drop(inbox, "52072.json", scrape(therapist("praxis21")))
    drop(inbox, "52073.json", scrape(therapist("praxis31")))
    monkeypatch.setattr(services, "identities_in_use", and_meanwhile)

    summary = run_pass()

    assert sneaked_in and groups == [(2, None)]  # taken together, then undone by the clash
    assert summary.by_status == {"succeeded": 3}
    found = records(admin_engine)
    assert [found[name]["counts"] for name in sorted(found)] == [counts(created=1), counts(created=1),
                                                                 counts(updated=1)]
    assert {name: r["attempts"] for name, r in found.items()} == {name: 1 for name in found}
    assert stored(admin_engine)["praxis31"][1:] == (2, f"import:{found['52073.json']['id']}")


def test_a_new_id_that_looks_like_a_therapist_another_file_updates_is_decided_in_their_order(
        inbox, run_pass, groups, admin_engine):
    """The second file moves a stored therapist to a new address; the third file's new id has that
    address. One at a time, the third file finds the moved therapist and warns of a possible
    duplicate; together it could not, so they go one at a time."""
    drop(inbox, "52071.json", scrape(practice("p-1")))
    run_pass()
    drop(inbox, "52071.json", scrape(therapist("praxis1")))
    drop(inbox, "52072.json", scrape(practice("p-1", "modified", WEEK_2, street="Neue Straße")))
    drop(inbox, "52073.json", scrape(practice("p-2", street="Neue Straße")))

    run_pass()

    assert groups == [(2, False)]
    found = records(admin_engine)
    assert found["52072.json"]["counts"] == counts(updated=1)
    assert [w["kind"] for w in found["52073.json"]["warnings"]] == ["possible-duplicate"]


def test_a_file_another_runner_finished_meanwhile_is_not_imported_again(
        inbox, run_pass, groups, admin_engine, monkeypatch):
    """Between the group's claim and its import, another runner finishes one of its files: the
    import sees the record as it is now, not as it was claimed, and leaves that file alone."""
    from shared.imports.grouped import GroupImport

    real = GroupImport.apply_together

    def finished_elsewhere(self, importing):
        with admin_engine.begin() as conn:
            conn.execute(text("UPDATE therapist_service.imports SET status = 'succeeded' WHERE name = '52073.json'"))
        return real(self, importing)

    monkeypatch.setattr(GroupImport, "apply_together", finished_elsewhere)
    drop(inbox, "52071.json", scrape(therapist("praxis11")))
    drop(inbox, "52072.json", scrape(therapist("praxis21")))
    drop(inbox, "52073.json", scrape(therapist("praxis31")))

    run_pass()

    assert groups == []  # the records were checked before the handler was asked
    assert set(stored(admin_engine)) == {"praxis11", "praxis21"}
    assert records(admin_engine)["52073.json"]["status"] == "succeeded"


def test_a_rescan_validates_ahead_only_the_files_that_changed(inbox, run_pass, admin_engine, monkeypatch):
    """A rescan finds every file of the folder again: those imported as they are now are finished
    again by their claim, and are not validated ahead for nothing."""
    from therapist_service.importer import TherapistFileHandler

    prefetched: list[bytes] = []
    real = TherapistFileHandler.prefetch

    def counted(self, payload):
        prefetched.append(payload)
        return real(self, payload)

    monkeypatch.setattr(TherapistFileHandler, "prefetch", counted)
    for n in range(1, 5):
        drop(inbox, f"5207{n}.json", scrape(therapist(f"praxis{n}")))
    run_pass()
    assert len(prefetched) == 3  # all but the first file of the pass
    changed = drop(inbox, "52073.json", scrape(therapist("praxis3", "modified", WEEK_2)))
    prefetched.clear()

    summary = run_pass()

    assert prefetched == [changed.read_bytes()]
    assert (summary.finished_again, summary.by_status) == (3, {"succeeded": 1})
