"""`/api/imports…` (SPEC §6.3) and `flask imports run-once` (SPEC §4) for the therapist service."""
from __future__ import annotations

import json
import os
import time

from conftest import AUTH

from .support import SAMPLE, all_therapists, drop, importer_state, imports, request_rescan, wait_for_import, wait_until


def settled(path) -> None:
    """Make a dropped file look as if it had been there a while (the foreground pass takes only
    files that have settled)."""
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))


# ---- flask imports run-once -----------------------------------------------------------------------

def test_run_once_imports_pending_files_and_prints_a_summary(inbox, make_app, importer_settings, smtp_server):
    app = make_app("therapist", **{**importer_settings, "IMPORTS_ENABLED": False})
    settled(drop(inbox, "52074.json", SAMPLE.read_bytes()))
    settled(drop(inbox, "52062.json", b"{not json"))

    result = app.test_cli_runner().invoke(args=["imports", "run-once"])

    assert result.exit_code == 0, result.output
    assert "therapist_service: 2 file(s) imported: 1 failed, 1 succeeded" in result.output
    assert "therapist_service: 1 alert(s) sent" in result.output
    client = app.test_client()
    records = {r["name"]: r for r in imports(client)}
    assert {name: r["status"] for name, r in records.items()} == {"52062.json": "failed", "52074.json": "succeeded"}
    assert len(all_therapists(client)) == 4
    assert [str(m["Subject"]) for m in smtp_server.messages] == [
        f"[therapist_service] import failed: #{records['52062.json']['id']}"]

    again = app.test_cli_runner().invoke(args=["imports", "run-once"])
    assert again.exit_code == 0, again.output
    assert "therapist_service: 0 file(s) imported" in again.output
    assert len(imports(client)) == 2


def test_run_once_refuses_while_a_background_importer_holds_the_lock(inbox, start_importer, make_app,
                                                                    importer_settings):
    start_importer()
    app = make_app("therapist", **{**importer_settings, "IMPORTS_ENABLED": False})

    result = app.test_cli_runner().invoke(args=["imports", "run-once"])

    assert result.exit_code == 1
    assert "another process holds the importer lock" in result.output


def test_run_once_without_an_import_folder_says_what_to_set(make_app):
    app = make_app("therapist")

    result = app.test_cli_runner().invoke(args=["imports", "run-once"])

    assert result.exit_code == 2
    assert "THERAPIST_IMPORT_DIR" in result.output


# ---- /api/imports -------------------------------------------------------------------------------

def test_imports_are_listed_newest_first_and_filtered_by_status(inbox, client):
    drop(inbox, "52074.json", SAMPLE.read_bytes())
    good = wait_for_import(client, "52074.json")
    drop(inbox, "52062.json", b"[")
    bad = wait_for_import(client, "52062.json")

    everything = client.get("/api/imports", headers=AUTH)
    failed = client.get("/api/imports?status=failed", headers=AUTH)
    succeeded = client.get("/api/imports?status=succeeded", headers=AUTH)

    assert [r["id"] for r in everything.get_json()] == [bad["id"], good["id"]]
    assert [r["id"] for r in failed.get_json()] == [bad["id"]]
    assert [r["id"] for r in succeeded.get_json()] == [good["id"]]
    assert json.loads(failed.headers["X-Pagination"])["total"] == 1
    assert client.get("/api/imports?status=done", headers=AUTH).status_code == 422
    assert client.get("/api/imports").status_code == 401


def test_import_record_is_read_by_id_with_its_errors(inbox, client):
    drop(inbox, "52074.json", b'{"therapists": "none"}')
    record = wait_for_import(client)

    response = client.get(f"/api/imports/{record['id']}", headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) >= {"id", "source", "name", "sha256", "size", "generation", "status", "attempts",
                         "next_attempt_at", "started_at", "finished_at", "counts", "errors", "warnings"}
    assert (body["source"], body["name"], body["status"], body["generation"]) == ("folder", "52074.json", "failed", None)
    assert [(e["kind"], e["pointer"]) for e in body["errors"]] == [("wrong-shape", "/therapists")]


def test_unknown_import_is_404(therapist_client):
    assert therapist_client.get("/api/imports/4242", headers=AUTH).status_code == 404
    assert therapist_client.post("/api/imports/4242/retry", headers=AUTH).status_code == 404


def test_run_request_answers_202_and_a_pass_follows(client, admin_engine):
    before = importer_state(admin_engine).get("run_requested_at")

    request_rescan(client, admin_engine)

    assert importer_state(admin_engine)["run_requested_at"] != before


def test_retry_of_a_failed_import_answers_202_and_tries_again_with_a_fresh_count(inbox, client):
    drop(inbox, "52074.json", b"{not json")
    failed = wait_for_import(client)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)

    response = client.post(f"/api/imports/{failed['id']}/retry", headers=AUTH)

    assert response.status_code == 202
    assert response.get_json()["id"] == failed["id"]

    def attempted_again():
        record = client.get(f"/api/imports/{failed['id']}", headers=AUTH).get_json()
        return record if record["status"] == "failed" and record["started_at"] != failed["started_at"] else None

    again = wait_until(attempted_again, what="the retried import to be attempted again")
    assert again["attempts"] == 1  # the count started afresh: not 2
    assert [e["kind"] for e in again["errors"]] == ["not-json"]  # the same content, the same error
    assert len(imports(client)) == 1


def test_retry_of_a_succeeded_import_is_409(inbox, client):
    drop(inbox, "52074.json", SAMPLE.read_bytes())
    record = wait_for_import(client)

    response = client.post(f"/api/imports/{record['id']}/retry", headers=AUTH)

    assert response.status_code == 409
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert client.get(f"/api/imports/{record['id']}", headers=AUTH).get_json()["status"] == "succeeded"
