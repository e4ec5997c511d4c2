"""The background importer as it runs in production (SPEC §7.1.1, §7.4): APScheduler, the advisory
lock, run requests through the API, and several apps (as several workers would) polling one bucket."""
from __future__ import annotations

from conftest import AUTH

from .support import MAX, encode, imports, object_name, patients, registration, run_pass, sample_bytes, wait_until


def test_run_request_through_the_api_polls_the_bucket_now(make_importer, gcs):
    app = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=3600.0)
    worker = app.extensions["imports"].worker
    wait_until(lambda: worker.is_leader and worker.last_pass_at, what="the first pass after taking the lock")
    gcs.upload(MAX, sample_bytes(MAX))

    response = app.test_client().post("/api/imports/run", headers=AUTH)

    assert response.status_code == 202
    wait_until(lambda: not gcs.names(), what="the object to be imported and deleted")
    assert [r["status"] for r in imports(app.test_client())] == ["succeeded"]


def test_two_running_importers_import_every_file_exactly_once(make_importer, gcs):
    documents = [registration(f"c000000{i}", email=f"patient{i}@example.de", vorname=f"Vorname{i}")
                 for i in range(6)]
    first = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=1.0)
    second = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=1.0)
    for document in documents:
        gcs.upload(object_name(document), encode(document))

    wait_until(lambda: not gcs.names(), what="every object to be imported and deleted")

    client = first.test_client()
    records = imports(client)
    assert sorted(r["name"] for r in records) == sorted(object_name(d) for d in documents)
    assert {r["status"] for r in records} == {"succeeded"} and {r["attempts"] for r in records} == {1}
    assert len(patients(client)) == len(documents)
    leaders = [app.extensions["imports"].worker.is_leader for app in (first, second)]
    assert sorted(leaders) == [False, True]


def test_standby_takes_over_when_the_importer_stops(make_importer, gcs):
    first = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=1.0)
    wait_until(lambda: first.extensions["imports"].worker.is_leader, what="the first importer to take the lock")
    second = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=1.0)

    first.extensions["importer_stop"]()
    gcs.upload(MAX, sample_bytes(MAX))

    wait_until(lambda: not gcs.names(), what="the standby to import the object")
    assert second.extensions["imports"].worker.is_leader
    assert [r["status"] for r in imports(second.test_client())] == ["succeeded"]


def test_run_once_refuses_while_another_process_holds_the_importer_lock(make_importer, gcs):
    running = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=3600.0)
    wait_until(lambda: running.extensions["imports"].worker.is_leader, what="the running importer to take the lock")

    result = make_importer().test_cli_runner().invoke(args=["imports", "run-once"])

    assert result.exit_code == 1
    assert "another process holds the importer lock" in result.output


def test_objects_outside_the_prefix_or_not_json_are_left_alone(make_importer, gcs):
    app = make_importer(PATIENT_IMPORT_SOURCE="gs://inbox/registrations")
    inside = f"registrations/{MAX}"
    for name in (inside, MAX, "registrations/mustermann_max_20250705_0b1ab67b.json.part", "registrations/notes.txt"):
        gcs.upload(name, sample_bytes(MAX))

    summary = run_pass(app)

    assert summary.by_status == {"succeeded": 1}, str(summary)
    assert [r["name"] for r in imports(app.test_client())] == [inside]
    assert gcs.names() == sorted([MAX, "registrations/mustermann_max_20250705_0b1ab67b.json.part",
                                  "registrations/notes.txt"])


def test_running_importer_retries_a_bad_file_until_quarantine_with_two_alerts(make_importer, gcs, smtp_server):
    bad = registration("c1000001", plz="5206")
    gcs.upload(object_name(bad), bad)
    app = make_importer(IMPORTS_ENABLED=True, PATIENT_IMPORT_INTERVAL_SECONDS=0.5, PATIENT_IMPORT_MAX_ATTEMPTS=3)
    client = app.test_client()

    wait_until(lambda: [r for r in imports(client) if r["status"] == "quarantined"], what="quarantine")

    [record] = imports(client)
    assert record["attempts"] == 3
    messages = smtp_server.wait_for(2)
    assert [str(m["Subject"]).split(":")[0] for m in messages] == [
        "[patient_service] import failed", "[patient_service] import quarantined"]
    assert gcs.names() == [object_name(bad)]
