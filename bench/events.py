"""Domain events benchmark (run by hand, not in CI):

    .venv/bin/python bench/events.py [--therapists 45000] [--rounds 3] [--rate 100] [--seconds 20]

1. The outbox's cost on the therapist import: the 45,000-therapist scrape file (bench/therapist_import.py
   makes it) imported with the real runner into a real embedded PostgreSQL, with events recorded and
   with recording off (the only switch, `shared.events.outbox.RECORDING`), alternating, each import in
   a child process of its own; the median of per-round ratios of wall time (the target: at most 1.15),
   and of the importing process's CPU time, which other load on the machine disturbs less.
2. Relay throughput: the outbox the last import filled (one event per therapist, the full
   representation) published by the real relay to a real broker (Tansu, in memory), from the first
   batch to the last acknowledged, in events per second.
3. Commit-to-broker latency: patients created through the REST API at `--rate` per second while the
   relay runs in a process of its own (as in another gunicorn worker); a consumer assigned to the
   topic (fetch wait 10 ms) notes when each arrives. p50 / p99 of arrival minus the moment the request
   returned (after its commit). The consumer's side is included: an upper bound of commit-to-broker.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from therapist_import import TOKEN, scrape, therapist, write_old  # noqa: E402  (the same data)

WORK = ROOT / "var" / "bench-events"


# ---- child: one measured import ---------------------------------------------------------------------

def child(folder: str, database_url: str, events: str) -> None:
    from shared.events import outbox
    from therapist_service import create_app

    outbox.RECORDING = events == "on"
    app = create_app({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{TOKEN}", "IMPORTS_ENABLED": False,
                      "THERAPIST_IMPORT_DIR": folder, "THERAPIST_IMPORT_SETTLE_SECONDS": 0,
                      "ALERT_OUTBOX_DIR": str(WORK / "outbox"), "LOG_LEVEL": "WARNING"})
    with app.app_context():
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = app.extensions["imports"].run_pass()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "summary": str(summary)}))


def run_child(folder: Path, database_url: str, events: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(folder), database_url, events],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def reset(dsn: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE therapist_service.therapists, therapist_service.therapist_versions, "
                    "therapist_service.imports, therapist_service.alerts, therapist_service.importer_state, "
                    "therapist_service.event_outbox, therapist_service.event_relay_state, "
                    "patient_service.patients, patient_service.patient_versions, patient_service.event_outbox "
                    "RESTART IDENTITY CASCADE")
    conn.close()


def count(dsn: str, query: str) -> int:
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(query)
        value = cur.fetchone()[0]
    conn.close()
    return value


# ---- 1. the outbox's cost on the import ----------------------------------------------------------------

def import_cost(database_url: str, dsn: str, n: int, rounds: int) -> None:
    folder = WORK / "single"
    folder.mkdir(parents=True)
    write_old(folder / "52074.json", scrape([therapist(i) for i in range(n)], "52XXX"))
    ratios, cpu_ratios = [], []
    for round_number in range(1, rounds + 1):
        runs = {}
        for events in (("off", "on") if round_number % 2 else ("on", "off")):  # alternate which goes first
            reset(dsn)
            runs[events] = run_child(folder, database_url, events)
        ratios.append(runs["on"]["seconds"] / runs["off"]["seconds"])
        cpu_ratios.append(runs["on"]["cpu_seconds"] / runs["off"]["cpu_seconds"])
        print(f"  round {round_number}: events off {runs['off']['seconds']:6.2f} s "
              f"(cpu {runs['off']['cpu_seconds']:6.2f} s), on {runs['on']['seconds']:6.2f} s "
              f"(cpu {runs['on']['cpu_seconds']:6.2f} s): ratio {ratios[-1]:.3f}, cpu ratio {cpu_ratios[-1]:.3f}")
    ratio = statistics.median(ratios)
    events_written = count(dsn, "SELECT count(*) FROM therapist_service.event_outbox")
    verdict = "PASS" if ratio <= 1.15 else "FAIL"
    print(f"import of {n} therapists, events on / off: median ratio {ratio:.3f} (target ≤ 1.15) {verdict}, "
          f"median ratio of the importing process's CPU time {statistics.median(cpu_ratios):.3f} (less "
          f"sensitive to other load; PostgreSQL's share not in it); {events_written} events recorded by the last run")


# ---- 2. relay throughput --------------------------------------------------------------------------------

def relay_throughput(database_url: str, dsn: str, broker) -> None:
    from therapist_service import create_app

    pending = count(dsn, "SELECT count(*) FROM therapist_service.event_outbox WHERE published_at IS NULL")
    app = create_app({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{TOKEN}", "IMPORTS_ENABLED": False,
                      "EVENTS_KAFKA_BOOTSTRAP": broker.bootstrap, "LOG_LEVEL": "WARNING"})
    relay = app.extensions["relay"]
    started = time.perf_counter()
    relay.start()
    while count(dsn, "SELECT count(*) FROM therapist_service.event_outbox WHERE published_at IS NULL"):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    relay.stop()
    print(f"relay throughput: {pending} events from a full outbox to acknowledged and marked in {elapsed:.2f} s "
          f"= {pending / elapsed:,.0f} events/s (includes taking the lock)")


# ---- 3. commit-to-broker latency ---------------------------------------------------------------------------

def relay_process(database_url: str, bootstrap: str, prefix: str) -> subprocess.Popen:
    """The patient service's relay in a process of its own, as in a gunicorn worker beside the writers."""
    return subprocess.Popen([sys.executable, __file__, "--relay", database_url, bootstrap, prefix])


def run_relay(database_url: str, bootstrap: str, prefix: str) -> None:
    from patient_service import create_app

    create_app({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{TOKEN}", "IMPORTS_ENABLED": True,
                "EVENTS_KAFKA_BOOTSTRAP": bootstrap, "EVENTS_TOPIC_PREFIX": prefix, "LOG_LEVEL": "WARNING"})
    time.sleep(3600)  # the relay thread works; the parent ends this process


def assigned_consumer(bootstrap: str, topic: str) -> Any:
    """A consumer on every partition of `topic` from its start (no group join to wait for)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-latency", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10})
    while True:
        metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            break
        time.sleep(0.1)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
    return consumer


def latency(database_url: str, broker, rate: float, seconds: float, writers: int = 4) -> None:
    from patient_service import create_app

    prefix = "bench."
    app = create_app({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{TOKEN}", "IMPORTS_ENABLED": False,
                      "EVENTS_KAFKA_BOOTSTRAP": broker.bootstrap, "EVENTS_TOPIC_PREFIX": prefix,
                      "LOG_LEVEL": "WARNING"})
    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def create(n: int) -> str:
        response = client.post("/api/patients", headers=headers, json={
            "vorname": f"Bench{n}", "nachname": "Latenz", "geburtsdatum": "1990-01-01", "email": f"b{n}@example.de"})
        return str(response.get_json()["id"])

    relay = relay_process(database_url, broker.bootstrap, prefix)
    try:
        warm_up = create(-1)  # creates the topic
        consumer = assigned_consumer(broker.bootstrap, f"{prefix}patient")
        committed: dict[str, float] = {}
        arrived: dict[str, float] = {}
        writing_done = threading.Event()

        def consume() -> None:
            idle_since = None
            while True:
                message = consumer.poll(0.02)
                now = time.time()
                if message is not None and not message.error():
                    arrived.setdefault(message.key().decode(), now)
                    idle_since = None
                elif writing_done.is_set():
                    idle_since = idle_since or now
                    if set(committed) <= set(arrived) or now - idle_since > 10:
                        return

        total = int(rate * seconds)
        started = time.perf_counter()

        def write(first: int) -> None:  # each writer takes every `writers`-th slot of the schedule
            for n in range(first, total, writers):
                pause = started + n / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                key = create(n)
                committed[key] = time.time()  # the request has returned: its transaction is committed

        reader = threading.Thread(target=consume)
        reader.start()
        threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        achieved = total / (time.perf_counter() - started)
        writing_done.set()
        reader.join()
        consumer.close()
    finally:
        relay.terminate()
        relay.wait()
    delays = sorted((arrived[key] - committed[key]) * 1000 for key in committed if key in arrived)
    missing = total - len(delays)
    p50 = delays[len(delays) // 2]
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(f"commit-to-broker latency at {achieved:.0f} writes/s ({total} writes, warm-up {warm_up} left out): "
          f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {delays[-1]:.0f} ms (target: under 1 s); {missing} not seen")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--therapists", type=int, default=45_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    from flask_migrate import upgrade

    from patient_service import create_app as patient_app
    from shared.config import sqlalchemy_url
    from shared.devdb import ensure_database, start_embedded
    from shared.events.broker import EmbeddedBroker
    from therapist_service import create_app as therapist_app

    server = start_embedded(ROOT / "var" / "bench-postgres")
    database_url = ensure_database(server.get_uri(), "bench_events")
    for factory in (patient_app, therapist_app):
        app = factory({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{TOKEN}", "IMPORTS_ENABLED": False,
                       "LOG_LEVEL": "WARNING"})
        with app.app_context():
            upgrade()
    dsn = sqlalchemy_url(database_url).replace("postgresql+psycopg2://", "postgresql://")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)

    print(f"1. the outbox's cost on the import ({args.rounds} rounds)")
    import_cost(database_url, dsn, args.therapists, args.rounds)
    broker = EmbeddedBroker(free_port(), WORK / "broker.log").start()
    try:
        print("2. relay throughput")
        relay_throughput(database_url, dsn, broker)
        print(f"3. latency at {args.rate:.0f} writes/s")
        latency(database_url, broker, args.rate, args.seconds)
    finally:
        broker.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--relay":
        run_relay(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
