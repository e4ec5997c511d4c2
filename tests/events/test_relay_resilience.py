"""None lost (SPEC §9.3): a broker outage during writes, a relay killed mid-stream, two relays
for one service. Every event that was committed arrives; a re-sent one carries the same `id`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest
from conftest import AUTH, ROOT
from helpers import wait_until
from sqlalchemy import text

from .support import outbox_events

LONG = 60.0


def patient_body(n: int):
    return {"vorname": f"Ida{n}", "nachname": "Beispiel", "geburtsdatum": "1990-01-01",
            "email": f"ida{n}@example.de"}


def create_patients(client, first: int, count: int) -> list[int]:
    ids = []
    for n in range(first, first + count):
        response = client.post("/api/patients", json=patient_body(n), headers=AUTH)
        assert response.status_code == 201, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def alert_subjects(admin_engine) -> list[str]:
    with admin_engine.connect() as conn:
        return list(conn.execute(text("SELECT subject FROM patient_service.alerts ORDER BY id")).scalars())


def assert_every_event_arrived_once_or_identically(received, outbox):
    by_id = defaultdict(set)
    for message in received:
        by_id[message.event["id"]].add(message.value)
    assert set(by_id) == {event["id"] for event in outbox}
    assert all(len(values) == 1 for values in by_id.values())  # a duplicate is byte-for-byte the same


@pytest.fixture
def quick_outages(monkeypatch):
    """A broker outage is noticed after 2 s instead of 10, and retried within a second."""
    from shared.events import relay

    monkeypatch.setattr(relay, "DELIVERY_TIMEOUT_SECONDS", 2.0)
    monkeypatch.setattr(relay, "BACKOFF_SECONDS", (0.2, 0.5, 1))


def test_writes_succeed_while_the_broker_is_down_and_every_event_arrives_after(
        quick_outages, make_app, event_settings, broker, reader, start_relay, admin_engine, tmp_path):
    app = make_app("patient", **event_settings, ALERT_OUTBOX_DIR=str(tmp_path / "alerts"))
    client = app.test_client()
    start_relay(app)
    create_patients(client, 0, 1)
    reader.read("patient", 1)

    broker.stop()
    ids = create_patients(client, 1, 50)  # every write succeeds: the event waits in the outbox
    wait_until(lambda: client.get("/ready").get_json()["relay"].get("broker_down_since"), timeout=LONG,
               what="the relay to notice the outage")
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert any(w["check"] == "broker" for w in ready.get_json()["warnings"])
    assert ready.get_json()["relay"]["pending"] >= 50

    broker.start()  # in-memory storage: it comes back empty, topics are created again on first produce
    received = reader.read("patient", 50, timeout=LONG)

    assert {int(m.event["subject"]) for m in received} == set(ids)
    assert_every_event_arrived_once_or_identically(received, outbox_events(admin_engine, "patient_service")[1:])
    wait_until(lambda: client.get("/ready").get_json()["relay"]["broker_down_since"] is None,
               what="the relay to note the recovery")
    assert alert_subjects(admin_engine) == ["[patient_service] event broker unreachable",
                                            "[patient_service] event broker reachable again"]
    assert client.get("/ready").get_json()["warnings"] == []


RELAY_PROCESS = textwrap.dedent("""
    import sys, time
    from shared.events import relay

    class SlowPublisher(relay.KafkaPublisher):  # a slow broker: the kill lands mid-stream
        def publish(self, events):
            result = super().publish(events)
            time.sleep(0.05)
            return result

    relay.KafkaPublisher = SlowPublisher
    relay.BATCH_SIZE = 10
    from patient_service import create_app
    create_app({"DATABASE_URL": sys.argv[1], "API_TOKENS": sys.argv[2], "IMPORTS_ENABLED": True,
                "EVENTS_KAFKA_BOOTSTRAP": sys.argv[3], "EVENTS_TOPIC_PREFIX": sys.argv[4]})
    time.sleep(600)
""")


def published_count(admin_engine) -> int:
    with admin_engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM patient_service.event_outbox WHERE published_at IS NOT NULL"))


def test_a_relay_killed_mid_stream_is_taken_over_and_every_event_arrives(
        make_app, migrated, event_settings, reader, start_relay, admin_engine):
    app = make_app("patient", **event_settings)
    client = app.test_client()
    response = client.post("/api/patients/batch", json={"items": [patient_body(n) for n in range(300)]},
                           headers=AUTH)
    assert response.status_code in (200, 201), response.get_json()
    process = subprocess.Popen([sys.executable, "-c", RELAY_PROCESS, migrated["DATABASE_URL"],
                                migrated["API_TOKENS"], event_settings["EVENTS_KAFKA_BOOTSTRAP"],
                                event_settings["EVENTS_TOPIC_PREFIX"]], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: published_count(admin_engine) >= 50, timeout=LONG, what="the relay process to publish")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert published_count(admin_engine) < 300  # killed mid-stream

    start_relay(app)  # takes over once PostgreSQL has let go of the dead process's lock
    received = reader.read("patient", 300, timeout=LONG)

    assert_every_event_arrived_once_or_identically(received, outbox_events(admin_engine, "patient_service"))
    wait_until(lambda: published_count(admin_engine) == 300, what="every event marked published")


def test_two_relays_of_one_service_publish_each_event_once(make_app, event_settings, reader, start_relay,
                                                            admin_engine):
    first, second = make_app("patient", **event_settings), make_app("patient", **event_settings)
    relays = [start_relay(first, wait_for_lead=False), start_relay(second, wait_for_lead=False)]
    wait_until(lambda: any(relay.is_leader for relay in relays), what="one relay to lead")

    create_patients(first.test_client(), 0, 20)
    received = reader.read("patient", 20, settle=1.5)

    assert sum(relay.is_leader for relay in relays) == 1
    assert len(received) == 20 and len({m.event["id"] for m in received}) == 20
    leader = next(relay for relay in relays if relay.is_leader)
    standby = next(relay for relay in relays if relay is not leader)
    leader.stop()
    wait_until(lambda: standby.is_leader, what="the standby to take over")
    create_patients(second.test_client(), 20, 5)
    assert len(reader.read("patient", 25)) == 25
