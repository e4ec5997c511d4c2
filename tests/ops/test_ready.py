"""`GET /health` and `GET /ready` (SPEC §6.4): `/ready` is 503 only for an unreachable database,
`/health` only for a background component started here that died; the rest are warnings."""
from __future__ import annotations

import socket

import pytest

from .support import wait_until


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when we return: nothing listens there


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_ready_without_a_token_when_the_database_answers(make_app, service):
    response = make_app(service).test_client().get("/ready")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["service"] == f"{service}_service"
    assert body["failures"] == []
    assert body["warnings"] == []
    assert body["database"]["ok"] is True
    assert body["importer"] == {"configured": False}


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_not_ready_when_the_database_is_unreachable(make_app, service):
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/curavani"
    client = make_app(service, DATABASE_URL=url).test_client()

    response = client.get("/ready")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready"
    assert [f["check"] for f in body["failures"]] == ["database"]
    assert body["failures"][0]["detail"].startswith("database unreachable")
    assert body["database"]["ok"] is False


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_healthy_while_the_database_is_unreachable(make_app, service):
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/curavani"
    client = make_app(service, DATABASE_URL=url).test_client()

    response = client.get("/health")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": f"{service}_service", "failures": []}


def test_unhealthy_but_ready_when_the_importer_thread_has_died(make_app, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    app = make_app("therapist", IMPORTS_ENABLED=True, THERAPIST_IMPORT_DIR=str(inbox),
                   THERAPIST_IMPORT_SETTLE_SECONDS=0.1)
    client = app.test_client()
    worker = app.extensions["imports"].worker
    assert client.get("/health").status_code == 200
    assert client.get("/ready").get_json()["importer"]["alive"] is True

    worker.work.put("stop")  # the worker thread's loop returns: the thread is gone, the clock runs on
    worker.thread.join(timeout=5)

    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json() == {"status": "unhealthy", "service": "therapist_service",
                                 "failures": [{"check": "importer", "detail": "importer thread dead"}]}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["failures"] == []
    assert body["warnings"] == [{"check": "importer", "detail": "importer thread dead"}]
    assert body["importer"]["alive"] is False
    assert body["database"]["ok"] is True


def test_unhealthy_when_the_importer_clock_has_stopped(make_app, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    app = make_app("therapist", IMPORTS_ENABLED=True, THERAPIST_IMPORT_DIR=str(inbox))
    app.extensions["imports"].worker.scheduler.shutdown(wait=True)

    response = app.test_client().get("/health")

    assert response.status_code == 503
    assert response.get_json()["failures"] == [{"check": "importer", "detail": "importer clock stopped"}]


def test_healthy_when_the_importer_is_not_started_in_this_process(make_app, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    app = make_app("therapist", IMPORTS_ENABLED=False, THERAPIST_IMPORT_DIR=str(inbox))

    response = app.test_client().get("/health")

    assert response.status_code == 200
    assert app.extensions["imports"].worker is None


def test_ready_with_a_warning_naming_the_source_while_it_is_unreachable(make_app, tmp_path):
    bucket = tmp_path / "bucket"  # not there yet: listing it fails
    app = make_app("patient", PATIENT_IMPORT_SOURCE=str(bucket), PATIENT_IMPORT_BACKUP_DIR=str(tmp_path / "backup"))
    client = app.test_client()
    with app.app_context():
        summary = app.extensions["imports"].run_pass()
    assert summary.source_error

    response = client.get("/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["failures"] == []
    assert body["importer"]["source_down_since"].startswith("20")
    assert body["warnings"] == [{"check": "source", "detail": "source (local folder acting as a bucket) "
                                                              f"unreachable since {body['importer']['source_down_since']}"}]
    assert client.get("/health").status_code == 200

    bucket.mkdir()
    with app.app_context():
        assert app.extensions["imports"].run_pass().source_error is None
    response = client.get("/ready")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["warnings"] == []
    assert response.get_json()["importer"]["source_down_since"] is None


def test_ready_warns_of_every_problem_at_once_and_health_names_the_dead_thread(make_app, tmp_path):
    app = make_app("patient", IMPORTS_ENABLED=True, PATIENT_IMPORT_SOURCE=str(tmp_path / "missing"),
                   PATIENT_IMPORT_BACKUP_DIR=str(tmp_path / "backup"))
    client = app.test_client()
    # The running importer takes the lock, looks at the bucket folder, and records the outage.
    wait_until(lambda: client.get("/ready").get_json()["importer"].get("source_down_since"),
               what="the importer to find the source unreachable")
    worker = app.extensions["imports"].worker
    worker.work.put("stop")
    worker.thread.join(timeout=5)

    response = client.get("/ready")

    assert response.status_code == 200
    assert [w["check"] for w in response.get_json()["warnings"]] == ["importer", "source"]
    assert client.get("/health").get_json()["failures"] == [{"check": "importer", "detail": "importer thread dead"}]
