"""The patient service under gunicorn with two workers (with and without `--preload`): one relay
publishes, each event once; a clean stop releases the relay's lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import API_TOKENS, AUTH, ROOT
from helpers import free_port, wait_until
from ops.support import image_command, samples_of, series
from sqlalchemy import text

from shared.imports.locking import lock_key

pytestmark = pytest.mark.slow


def relay_lock_holders(admin_engine) -> list[int]:
    with admin_engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :key "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"key": lock_key("patient_service:event-relay")}).scalars())


@pytest.fixture(params=[False, True], ids=["app-per-worker", "preload"])
def gunicorn(request, migrated, database_url, event_settings, tmp_path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "API_TOKENS": API_TOKENS,
           "SERVICE_APP": "patient_service.app:create_app()", "HOST": "127.0.0.1", "PORT": str(port),
           "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2", "GUNICORN_GRACEFUL_TIMEOUT": "10",
           "ALERT_OUTBOX_DIR": str(tmp_path / "outbox"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
           **event_settings}
    command = [str(Path(sys.executable).parent / "gunicorn"), *image_command()[1:],
               *(["--preload"] if request.param else [])]
    log = (tmp_path / "gunicorn.log").open("w+")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()


def test_two_gunicorn_workers_run_one_relay_and_every_event_arrives_once(gunicorn, reader, admin_engine):
    process, base = gunicorn

    def relay_leads():
        try:
            held = series(samples_of(requests.get(f"{base}/metrics", timeout=5).text), "curavani_event_relay_leader")
        except (requests.ConnectionError, requests.Timeout):
            assert process.poll() is None, "gunicorn exited"
            return False
        return len(held) >= 2 and sum(held.values()) == 1 and held

    held = wait_until(relay_leads, timeout=30, what="both workers up, one relay leading")
    [leader] = [dict(labels)["pid"] for labels, v in held.items() if v == 1]
    assert leader != str(process.pid)  # a worker publishes, never the master
    for n in range(30):
        response = requests.post(f"{base}/api/patients", headers=AUTH, timeout=10, json={
            "vorname": f"Gun{n}", "nachname": "Icorn", "geburtsdatum": "1990-01-01", "email": f"g{n}@example.de"})
        assert response.status_code == 201

    received = reader.read("patient", 30, settle=1.5)

    assert len(received) == 30 and len({m.event["id"] for m in received}) == 30
    assert len(relay_lock_holders(admin_engine)) == 1
    assert requests.get(f"{base}/ready", timeout=10).json()["relay"]["holder"].endswith(f":{leader}")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert relay_lock_holders(admin_engine) == []
