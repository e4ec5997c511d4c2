"""The therapist service for real under gunicorn, started with the Docker image's command
(`gunicorn -c gunicorn.conf.py`, the app from SERVICE_APP): two workers, one importer, metrics
added up across workers, JSON log lines, a clean stop on SIGTERM that releases the lock, and a
port that is taken refused."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import API_TOKENS, AUTH, ROOT
from sqlalchemy import text

from shared.imports.locking import lock_key

from .support import THERAPIST_SAMPLE, copy_samples, image_command, samples_of, series, value, wait_until

pytestmark = pytest.mark.slow
SERVICE = {"service": "therapist_service"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def advisory_lock_holders(admin_engine) -> list[int]:
    """Backend pids holding the therapist importer's advisory lock in the test database."""
    with admin_engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :key "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"key": lock_key("therapist_service")}).scalars())


@pytest.fixture(params=[False, True], ids=["app-per-worker", "preload"])
def gunicorn(request, migrated, database_url, tmp_path):
    """The image's start command, run from the repository with the virtual environment's gunicorn;
    and once more with `--preload` (the master creates the app, the workers fork from it)."""
    inbox = tmp_path / "inbox"
    copy_samples([THERAPIST_SAMPLE], inbox)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "API_TOKENS": API_TOKENS,
           "SERVICE_APP": "therapist_service.app:create_app()", "HOST": "127.0.0.1", "PORT": str(port),
           "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2", "GUNICORN_GRACEFUL_TIMEOUT": "10",
           "THERAPIST_IMPORT_DIR": str(inbox), "THERAPIST_IMPORT_SETTLE_SECONDS": "0.2",
           "ALERT_OUTBOX_DIR": str(tmp_path / "outbox"), "LOG_FORMAT": "json",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    command = image_command()
    assert command[0] == "gunicorn"
    command = [str(Path(sys.executable).parent / "gunicorn"), *command[1:], *(["--preload"] if request.param else [])]
    log = (tmp_path / "gunicorn.log").open("w+")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    yield process, f"http://127.0.0.1:{port}", log
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()


def test_two_workers_under_gunicorn_one_importer_metrics_of_both_and_a_clean_stop(gunicorn, admin_engine):
    process, base, log = gunicorn

    def ready():
        try:
            return requests.get(f"{base}/ready", timeout=5).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not listening, or no worker booted yet
            assert process.poll() is None, "gunicorn exited"
            return False

    wait_until(ready, timeout=30, what="/ready to answer 200")
    # The sample in the folder is imported by whichever worker holds the lock.
    imported = wait_until(lambda: [r for r in requests.get(f"{base}/api/imports", headers=AUTH, timeout=10).json()
                                   if r["status"] == "succeeded"], timeout=20, what="the sample's import")
    assert [r["name"] for r in imported] == ["52074.json"]

    # Both workers report; exactly one holds the lock — every scrape says so, whichever worker answers.
    # (A preloading master, which stopped the importer it started, reports 0 as well.)
    def both_workers_reported():
        scraped = samples_of(requests.get(f"{base}/metrics", timeout=10).text)
        held = series(scraped, "curavani_importer_lock_held")
        return len(held) >= 2 and scraped

    scraped = wait_until(both_workers_reported, timeout=20, what="both workers' lock gauges")
    for _ in range(6):  # new connections: the scrapes are spread over both workers
        held = series(scraped, "curavani_importer_lock_held")
        assert sorted(held.values())[-2:] == [0.0, 1.0] and sum(held.values()) == 1, held
        assert value(scraped, "curavani_imports_total", **SERVICE, status="succeeded") == 1
        assert value(scraped, "curavani_import_items_total", **SERVICE, action="created") > 0
        assert value(scraped, "curavani_import_last_success_timestamp_seconds", **SERVICE) > 0
        assert value(scraped, "curavani_database_up", **SERVICE) == 1
        scraped = samples_of(requests.get(f"{base}/metrics", timeout=10, headers={"Connection": "close"}).text)
    [leader_labels] = [labels for labels, v in series(scraped, "curavani_importer_lock_held").items() if v == 1]
    leader_pid = dict(leader_labels)["pid"]
    assert leader_pid != str(process.pid)  # a worker imports, never the master
    state = requests.get(f"{base}/ready", timeout=10).json()["importer"]
    assert state["lock_holder"].endswith(f":{leader_pid}")
    assert len(advisory_lock_holders(admin_engine)) == 1

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert advisory_lock_holders(admin_engine) == []
    log.seek(0)
    lines = log.read().splitlines()
    entries = [json.loads(line) for line in lines]  # LOG_FORMAT=json: every line, gunicorn's too
    assert any(e["message"] == "importer lock therapist_service released" for e in entries)
    assert any(e["logger"] == "gunicorn.error" and e["message"].startswith("Shutting down") for e in entries)


def test_a_request_gunicorn_refuses_is_answered_with_problem_details(gunicorn):
    process, base, log = gunicorn
    wait_until(lambda: _answers(process, f"{base}/health"), timeout=30, what="gunicorn to answer")

    long_line = requests.get(f"{base}/api/therapists?city={'a' * 8200}", headers=AUTH, timeout=10)
    assert long_line.status_code == 414
    assert long_line.headers["Content-Type"] == "application/problem+json"
    assert long_line.json()["status"] == 414 and long_line.json()["title"] == "URI Too Long"

    within = requests.get(f"{base}/api/therapists?city={'a' * 7000}", headers=AUTH, timeout=10)
    assert within.status_code == 200  # longer than gunicorn's default limit of 4094, within ours

    long_header = requests.get(f"{base}/api/therapists", headers={**AUTH, "X-Note": "a" * 8200}, timeout=10)
    assert long_header.status_code == 431
    assert long_header.headers["Content-Type"] == "application/problem+json"
    assert long_header.json()["status"] == 431

    # A malformed request line: 400 as a problem, and the line (a query can name a patient) not logged.
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"GET /api/patients?nachname=Geheimname\x7f HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/problem+json" in head
    assert json.loads(body)["status"] == 400

    process.send_signal(signal.SIGTERM)  # a clean stop: no worker left writing while the tables are emptied
    assert process.wait(timeout=20) == 0
    log.seek(0)
    logged = log.read()
    assert "Invalid HTTP request line" in logged and "Geheimname" not in logged


def test_a_port_another_process_listens_on_is_refused(migrated, database_url, tmp_path):
    """Each worker binds its own socket with SO_REUSEPORT, which would quietly share a port with
    any listener that set it too; the master checks first and stops, as a plain bind would."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the kind that could be joined
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": database_url, "API_TOKENS": API_TOKENS, "HOST": "127.0.0.1",
               "PORT": str(port), "SERVICE_APP": "therapist_service.app:create_app()", "IMPORTS_ENABLED": "false"}
        command = [str(Path(sys.executable).parent / "gunicorn"), *image_command()[1:]]
        finished = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert finished.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in finished.stdout + finished.stderr


def _answers(process, url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        assert process.poll() is None, "gunicorn exited"
        return False
