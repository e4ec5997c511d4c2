"""What happens between the steps of an import (SPEC §7.1.5, §7.3): an object replaced after it
was read, a crash after the commit, and the bucket going away and coming back.

The first two use the runner's own `on_record_finished` hook, which it calls after the commit
and before it deletes the object: the test acts there, and the code under test runs unchanged.
"""
from __future__ import annotations

import pytest

from .support import MAX, encode, get_json, imports, object_name, patient_history, patients, registration, run_pass, sample_bytes


class SimulatedCrash(Exception):
    """The process dies here: after the commit, before the object is deleted."""


def _process_first_listed(app, on_record_finished) -> str | None:
    with app.app_context():
        imports = app.extensions["imports"]
        runner = imports.runner()
        runner.on_record_finished = on_record_finished
        [listed] = imports.source.list()
        return runner.process(listed)


def test_object_reuploaded_between_download_and_delete_is_not_deleted(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))
    changed = registration("0b1ab67b", plz="52064")
    new_generations = []

    status = _process_first_listed(app, lambda record, seconds: new_generations.append(gcs.upload(MAX, changed)))

    assert status == "succeeded"
    assert gcs.names() == [MAX] and gcs.generation(MAX) == new_generations[0]
    [patient] = patients(client)
    assert patient["plz"] == "52062"  # the content that was read

    run_pass(app)  # the next poll reads the new generation

    _first, second = imports(client)
    assert (second["generation"], second["status"], second["counts"]["updated"]) == (
        new_generations[0], "succeeded", 1)
    assert [p["plz"] for p in patients(client)] == ["52064"]
    assert gcs.names() == []


def test_crash_between_commit_and_delete_imports_once_and_deletes_on_next_poll(app, client, gcs):
    gcs.upload(MAX, sample_bytes(MAX))

    def crash(record, seconds):
        raise SimulatedCrash()

    with pytest.raises(SimulatedCrash):
        _process_first_listed(app, crash)

    [record] = imports(client)
    assert record["status"] == "succeeded"
    assert gcs.names() == [MAX]

    summary = run_pass(app)

    assert summary.finished_again == 1 and summary.files == 0, str(summary)
    assert gcs.names() == []
    assert imports(client) == [record]  # no second import of the same generation
    [patient] = patients(client)
    assert len(patient_history(client, patient["id"])) == 1
    assert len(get_json(client, f"/api/patients/{patient['id']}/registrations")) == 1
    assert len(get_json(client, f"/api/patients/{patient['id']}/consents")) == 1


def test_bucket_outage_gives_one_unreachable_and_one_recovered_alert(app, client, gcs, emulator, smtp_server):
    run_pass(app)
    emulator.stop()

    for _ in range(3):
        summary = run_pass(app)
        assert summary.source_error, str(summary)

    assert [str(m["Subject"]) for m in smtp_server.wait_for(1)] == [
        "[patient_service] import source unreachable"]
    body = smtp_server.messages[0].get_content()
    assert "gs://inbox/" in body and "Unreachable since:" in body

    emulator.start()  # same port; an in-memory emulator starts empty
    gcs.upload(MAX, sample_bytes(MAX))
    summary = run_pass(app)
    run_pass(app)

    assert summary.by_status == {"succeeded": 1}, str(summary)
    assert [str(m["Subject"]) for m in smtp_server.wait_for(2)] == [
        "[patient_service] import source unreachable", "[patient_service] import source reachable again"]
    assert len(patients(client)) == 1 and gcs.names() == []


def test_a_pass_stopped_after_a_file_leaves_the_next_one_claimed_and_the_next_pass_imports_it(app, client, gcs):
    """Each import also claims the next file of the pass, in its own transaction (issue 14): a pass
    that stops there (the importer lock lost, or a crash) leaves that file `processing`, as a crash
    after any claim does, and the next pass imports it."""
    first, second = registration("0b1ab67b"), registration("0c2ac78c", plz="52064", email="erika@example.org")
    for document in (first, second):
        gcs.upload(object_name(document), encode(document))
    leading = iter([True, False])

    with app.app_context():
        summary = app.extensions["imports"].run_pass(still_leader=lambda: next(leading, False))

    assert summary.by_status == {"succeeded": 1}
    assert sorted((r["status"], r["attempts"]) for r in imports(client)) == [("processing", 1), ("succeeded", 1)]

    run_pass(app)

    assert sorted((r["status"], r["attempts"]) for r in imports(client)) == [("succeeded", 1), ("succeeded", 2)]
    assert gcs.names() == [] and len(patients(client)) == 2
