"""Many workers, one importer (SPEC §7.4): two app instances against one database, each with its
background importer running, as two gunicorn workers would be. The PostgreSQL advisory lock
decides which one imports; the other stands by and takes over when the first stops."""
from __future__ import annotations

import os
import time

from conftest import AUTH
from sqlalchemy import text

from .support import SAMPLE, all_therapists, drop, drop_barrier, history, imports_of, sample_document, wait_for_import, wait_until


def advisory_locks_held(admin_engine) -> int:
    from shared.imports.locking import lock_key

    with admin_engine.connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = 0 AND objid::text::bigint = :key"), {"key": lock_key("therapist_service")}).scalar()


def leader_and_standby(first, second):
    workers = {app: app.extensions["imports"].worker for app in (first, second)}
    wait_until(lambda: any(w.is_leader for w in workers.values()), what="one worker to take the lock")
    leaders = [app for app, w in workers.items() if w.is_leader]
    assert len(leaders) == 1, f"{len(leaders)} workers hold the importer lock"
    [leader] = leaders
    [standby] = [app for app in workers if app is not leader]
    return leader, standby


def test_two_workers_import_a_file_exactly_once_and_only_one_holds_the_lock(inbox, start_importer, admin_engine):
    first = start_importer(wait_for_lead=False)
    second = start_importer(wait_for_lead=False)
    leader, standby = leader_and_standby(first, second)
    client, standby_client = leader.test_client(), standby.test_client()

    drop(inbox, "52074.json", SAMPLE.read_bytes())
    record = wait_for_import(client)
    for each in (client, standby_client):  # a run request on either worker is carried out by the leader
        assert each.post("/api/imports/run", headers=AUTH).status_code == 202
    drop_barrier(inbox, standby_client)

    assert [(r["id"], r["status"], r["attempts"]) for r in imports_of(client, "52074.json")] == [
        (record["id"], "succeeded", 1)]
    stored = all_therapists(client)
    assert len(stored) == record["counts"]["created"] == 4
    for therapist in stored:
        assert [v["actor"] for v in history(client, therapist["id"])] == [f"import:{record['id']}"]
    assert leader.extensions["imports"].worker.is_leader
    assert not standby.extensions["imports"].worker.is_leader
    assert advisory_locks_held(admin_engine) == 1


def test_standby_takes_over_when_the_leader_stops(inbox, start_importer, admin_engine):
    first = start_importer(wait_for_lead=False)
    second = start_importer(wait_for_lead=False)
    leader, standby = leader_and_standby(first, second)

    leader.extensions["importer_stop"]()
    wait_until(lambda: standby.extensions["imports"].worker.is_leader, timeout=5,
               what="the standby to take the lock")
    wait_until(lambda: standby.extensions["imports"].source.observer_alive(), timeout=5,
               what="the standby to watch the folder")

    assert not leader.extensions["imports"].worker.is_leader
    assert advisory_locks_held(admin_engine) == 1
    client = standby.test_client()
    drop(inbox, "52074.json", SAMPLE.read_bytes())
    record = wait_for_import(client)
    assert record["status"] == "succeeded"
    assert len(all_therapists(client)) == 4


def test_files_present_at_the_first_start_are_imported_by_the_start_up_rescan(inbox, start_importer):
    target = drop(inbox, "52074.json", SAMPLE.read_bytes())
    an_hour_ago = time.time() - 3600
    os.utime(target, (an_hour_ago, an_hour_ago))  # long settled, and no event will ever come for it

    app = start_importer()  # a fresh database: the first pass and the first heartbeat race to set up state
    record = wait_for_import(app.test_client(), timeout=5)

    assert record["status"] == "succeeded"


def test_file_that_arrived_while_no_importer_ran_is_found_by_the_start_up_rescan(inbox, start_importer):
    stopped = start_importer()
    stopped.extensions["importer_stop"]()
    target = drop(inbox, "52074.json", SAMPLE.read_bytes())
    an_hour_ago = time.time() - 3600
    os.utime(target, (an_hour_ago, an_hour_ago))  # long settled: only a rescan can find it

    app = start_importer()
    client = app.test_client()
    record = wait_for_import(client)

    assert record["status"] == "succeeded"
    assert record["counts"]["created"] == sum(t["status"] != "deleted" for t in sample_document()["therapists"])
