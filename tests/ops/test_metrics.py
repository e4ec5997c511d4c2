"""`GET /metrics` (SPEC §6.4) after real imports and real requests, in single-process mode (the
gunicorn test covers multiprocess mode). Counters are process-wide, so tests compare a scrape
before with a scrape after."""
from __future__ import annotations

import json
import re

import pytest
from conftest import AUTH, ROOT
from prometheus_client.parser import text_string_to_metric_families

from .support import PATIENT_SAMPLES, THERAPIST_SAMPLE, copy_samples, samples_of, series, value, wait_until

THERAPISTS = {"service": "therapist_service"}
PATIENTS = {"service": "patient_service"}


def scrape(client) -> dict:
    response = client.get("/metrics")  # no token
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return samples_of(response.get_data(as_text=True))


def therapist_app_with_folder(make_app, folder, **overrides):
    return make_app("therapist", THERAPIST_IMPORT_DIR=str(folder), THERAPIST_IMPORT_SETTLE_SECONDS=0,
                    **overrides)


def test_metrics_count_a_real_therapist_import_by_status_items_and_duration(make_app, tmp_path):
    inbox = tmp_path / "inbox"
    copy_samples([THERAPIST_SAMPLE], inbox)
    (inbox / "10115.json").write_bytes(b'{"metadata": {}, "therapists": [')  # cut off: fails
    app = therapist_app_with_folder(make_app, inbox, ALERT_OUTBOX_DIR=str(tmp_path / "outbox"))
    client = app.test_client()
    before = scrape(client)

    with app.app_context():
        summary = app.extensions["imports"].run_pass()
    assert summary.by_status == {"succeeded": 1, "failed": 1}
    [record] = [r for r in client.get("/api/imports", headers=AUTH).get_json() if r["status"] == "succeeded"]
    after = scrape(client)

    def grew(name, **labels):
        return value(after, name, **THERAPISTS, **labels) - value(before, name, **THERAPISTS, **labels)

    assert grew("curavani_imports_total", status="succeeded") == 1
    assert grew("curavani_imports_total", status="failed") == 1
    for action, count in record["counts"].items():
        assert grew("curavani_import_items_total", action=action) == count, action
    assert grew("curavani_import_items_total", action="created") > 0
    assert grew("curavani_import_duration_seconds_count") == 2
    assert grew("curavani_import_duration_seconds_sum") > 0
    with app.app_context():
        last_success = app.extensions["imports"].state_row().last_success_at
    assert value(after, "curavani_import_last_success_timestamp_seconds", **THERAPISTS) == last_success.timestamp()
    assert value(after, "curavani_import_source_up", **THERAPISTS) == 1
    assert value(after, "curavani_database_up", **THERAPISTS) == 1
    # The failed file raised one alert; it waits until the sender delivers it (to the outbox here).
    assert value(after, "curavani_alerts_pending", **THERAPISTS) == 1
    with app.app_context():
        assert app.extensions["imports"].send_alerts() == 1
    delivered = scrape(client)
    assert value(delivered, "curavani_alerts_pending", **THERAPISTS) == 0
    assert (value(delivered, "curavani_alerts_sent_total", **THERAPISTS)
            - value(after, "curavani_alerts_sent_total", **THERAPISTS)) == 1


def test_metrics_count_real_patient_imports(make_app, tmp_path):
    bucket = tmp_path / "bucket"
    copy_samples(PATIENT_SAMPLES, bucket)
    app = make_app("patient", PATIENT_IMPORT_SOURCE=str(bucket), PATIENT_IMPORT_BACKUP_DIR=str(tmp_path / "backup"))
    client = app.test_client()
    before = scrape(client)

    with app.app_context():
        assert app.extensions["imports"].run_pass().by_status == {"succeeded": len(PATIENT_SAMPLES)}
    after = scrape(client)

    assert (value(after, "curavani_imports_total", **PATIENTS, status="succeeded")
            - value(before, "curavani_imports_total", **PATIENTS, status="succeeded")) == len(PATIENT_SAMPLES)
    assert (value(after, "curavani_import_items_total", **PATIENTS, action="created")
            - value(before, "curavani_import_items_total", **PATIENTS, action="created")) == len(PATIENT_SAMPLES)
    assert value(after, "curavani_import_last_success_timestamp_seconds", **PATIENTS) > 0
    # A patient app's scrape shows the patient service's series only.
    assert {dict(labels)["service"] for labels in series(after, "curavani_imports_total")} == {"patient_service"}


def test_metrics_count_requests_by_route_rule_and_status_with_latency(therapist_app):
    client = therapist_app.test_client()
    created = client.post("/api/therapists", headers=AUTH, json={
        "external_id": "praxis-metrics", "basic_info": {"first_name": "Anna", "last_name": "Beispiel"}})
    assert created.status_code == 201, created.get_json()
    therapist_id = created.get_json()["id"]
    route = "/api/therapists/<int:therapist_id>"
    before = scrape(client)

    for _ in range(3):
        assert client.get(f"/api/therapists/{therapist_id}", headers=AUTH).status_code == 200
    assert client.get(f"/api/therapists/{therapist_id + 1000}", headers=AUTH).status_code == 404
    assert client.get(f"/api/therapists/{therapist_id}").status_code == 401  # answered before the view
    assert client.get("/no/such/path/123").status_code == 404
    after = scrape(client)

    def grew(name, **labels):
        return value(after, name, **THERAPISTS, **labels) - value(before, name, **THERAPISTS, **labels)

    assert grew("curavani_http_requests_total", method="GET", route=route, status="200") == 3
    assert grew("curavani_http_requests_total", method="GET", route=route, status="404") == 1
    assert grew("curavani_http_requests_total", method="GET", route=route, status="401") == 1
    assert grew("curavani_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert grew("curavani_http_request_duration_seconds_count", method="GET", route=route) == 5
    assert grew("curavani_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf") == 5
    # No series names a raw path.
    routes = {dict(labels)["route"] for labels in series(after, "curavani_http_requests_total")}
    assert not any(str(therapist_id) in r for r in routes), routes


def test_metrics_show_this_process_holds_the_lock_and_the_files_waiting(make_app, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    app = make_app("therapist", IMPORTS_ENABLED=True, THERAPIST_IMPORT_DIR=str(inbox),
                   THERAPIST_IMPORT_SETTLE_SECONDS=60)  # a dropped file waits a minute to settle
    client = app.test_client()
    worker = app.extensions["imports"].worker
    wait_until(lambda: worker.is_leader and worker.imports.source.observer_alive(), what="the lock")

    (inbox / "52074.json").write_text(json.dumps({"metadata": {}, "therapists": []}))
    waiting = wait_until(lambda: (lambda m: value(m, "curavani_import_files_waiting", **THERAPISTS) == 1 and m)(
        scrape(client)), what="the file to be counted as waiting")
    assert value(waiting, "curavani_importer_lock_held", **THERAPISTS) == 1

    app.extensions["importer_stop"]()
    stopped = scrape(client)
    assert value(stopped, "curavani_importer_lock_held", **THERAPISTS) == 0
    assert value(stopped, "curavani_import_files_waiting", **THERAPISTS) == 0


def test_metrics_answer_when_the_database_does_not(make_app):
    client = make_app("therapist", DATABASE_URL="postgresql://nobody@127.0.0.1:9/curavani").test_client()

    samples = scrape(client)

    assert value(samples, "curavani_database_up", **THERAPISTS) == 0


# ---- the runbook's list (docs/operations.md), present from the first scrape -----------------------

DOCUMENTED_METRIC = re.compile(r"^\s*\| `(?P<name>curavani_[a-z_]+)(?:\{(?P<labels>[^}]*)\})?` \|")


def documented_metrics() -> dict[str, set[str]]:
    """The metrics the runbook's table (docs/operations.md) lists, with the labels it names (besides `service`)."""
    found = {}
    for line in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").splitlines():
        if match := DOCUMENTED_METRIC.match(line):
            found[match["name"]] = {label.strip() for label in (match["labels"] or "").split(",") if label.strip()}
    return found


def test_the_runbook_lists_the_metrics_it_documents():
    assert {"curavani_alerts_sent_total", "curavani_http_requests_total", "curavani_database_up"} <= set(documented_metrics())


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_a_fresh_service_lists_every_metric_of_the_runbook_from_the_first_scrape(make_app, service):
    app = make_app(service)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for name, labels in documented_metrics().items():
        assert name in typed, f"{name} is in docs/operations.md but not in /metrics"
        if "route" in labels:
            continue  # labelled by route and status: a series appears with the first request of each
        family = families.get(name) or families[name.removesuffix("_total")]
        ours = [s for s in family.samples if s.labels.get("service") == app.config["SERVICE_NAME"]]
        assert ours, f"{name} has no series of {app.config['SERVICE_NAME']} before anything happened"
