"""Participants: the upstream job's batches against a raw upsert (run by hand; not part of CI):

    .venv/bin/python bench/participants.py [--rounds 5]

It starts an embedded PostgreSQL in ./var/bench-postgres with a fresh database of its own, runs
the therapist migrations and creates the therapist app in-process (importers off), driven through
its test client: our code and no network. Each round generates 1,000 participants of their own
(`scripts/send_participants.py generate`, 70 % with a MID) and times
- `first`: POST /api/appointments/participants in 5 batches of 200 (each 201, all created),
- `second`: the same 5 batches again (each 204: all unchanged, nothing written),
- `raw`: the same rows through `psycopg2.extras.execute_values` as `INSERT … ON CONFLICT (id) DO
  UPDATE` into an empty scratch table with the participant's columns and unique MID, on an open
  connection, in the same batches of 200, a commit per batch.
It prints each round, the medians, and the median of the rounds' ratios first/raw and second/raw
against the issue's targets (≤ 6×, ≤ 3×) with PASS/FAIL, then drops the database.
"""
from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

import psycopg2
from psycopg2.extras import Json, execute_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the packages live next to bench/

from scripts.send_participants import MID_KEYS, generate  # noqa: E402
from shared.devdb import drop_database, ensure_database, start_embedded  # noqa: E402

DATABASE_NAME = "curavani_bench_participants"
PATH = "/api/appointments/participants"
COUNT, BATCH_SIZE, MID_RATIO = 1000, 200, 0.7
TARGETS = {"first": 6.0, "second": 3.0}  # at most this many times the raw upsert
COLUMNS = ("id", "first_name", "last_name", "email", "phone", "mid", "username", "attendance_status", "metadata",
           "batch_id", "source")
SCRATCH_TABLE = """
CREATE TABLE bench_raw_participants (
    id varchar(200) PRIMARY KEY, first_name varchar(200), last_name varchar(200), email varchar(320),
    phone varchar(100), mid varchar(200) UNIQUE, username varchar(200), attendance_status varchar(100),
    metadata jsonb, batch_id varchar(200), source varchar(200),
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL
)"""
UPSERT = (f"INSERT INTO bench_raw_participants ({', '.join(COLUMNS)}, created_at, updated_at) VALUES %s "
          "ON CONFLICT (id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])
          + ", updated_at = EXCLUDED.updated_at")


def batches_of(document: dict) -> list[dict]:
    participants = document["participants"]
    return [{"batchId": document["batchId"], "source": document["source"],
             "participants": participants[start:start + BATCH_SIZE]}
            for start in range(0, len(participants), BATCH_SIZE)]


def time_pass(client, headers: dict, batches: list[dict], expected_status: int) -> float:
    started = time.perf_counter()
    for body in batches:
        response = client.post(PATH, json=body, headers=headers)
        if response.status_code != expected_status:
            raise RuntimeError(f"batch answered {response.status_code} {response.get_data(as_text=True)[:300]}; "
                               f"expected {expected_status}")
    return time.perf_counter() - started


def raw_row(batch: dict, item: dict) -> tuple:
    mid = next((item[key] for key in MID_KEYS if key in item), None)
    return (item["participantId"], item["firstName"].strip(), item["lastName"].strip(), item["email"].strip().lower(),
            item["phone"], mid, item["username"], item["attendanceStatus"], Json(item["metadata"]),
            batch["batchId"], batch["source"])


def time_raw_upsert(conn, batches: list[dict]) -> float:
    started = time.perf_counter()
    for batch in batches:
        rows = [raw_row(batch, item) for item in batch["participants"]]
        with conn.cursor() as cur:
            execute_values(cur, UPSERT, rows, template=f"({', '.join(['%s'] * len(COLUMNS))}, now(), now())",
                           page_size=len(rows))
        conn.commit()
    return time.perf_counter() - started


def migrate_and_create_app(database_url: str, token: str):
    from flask_migrate import upgrade

    from therapist_service import create_app

    app = create_app({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{token}",
                      "IMPORTS_ENABLED": False, "LOG_LEVEL": "WARNING"})
    with app.app_context():
        upgrade()
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description="participants batches against a raw upsert")
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    token = secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {token}"}
    server = start_embedded(ROOT / "var" / "bench-postgres")
    base_url = server.get_uri()
    drop_database(base_url, DATABASE_NAME)  # every run starts from an empty database
    database_url = ensure_database(base_url, DATABASE_NAME)
    app = None
    raw = psycopg2.connect(database_url)
    try:
        app = migrate_and_create_app(database_url, token)
        client = app.test_client()
        with raw.cursor() as cur:
            cur.execute(SCRATCH_TABLE)
        raw.commit()

        # Warm-up, untimed: first-request setup in the app, plans and caches in both paths.
        warm = batches_of(generate(50, mid_ratio=MID_RATIO, seed=10_000))
        time_pass(client, headers, warm, 201)
        time_pass(client, headers, warm, 204)
        time_raw_upsert(raw, warm)

        times: dict[str, list[float]] = {"first": [], "second": [], "raw": []}
        print(f"{COUNT} participants ({MID_RATIO:.0%} with a MID) in batches of {BATCH_SIZE}, {rounds} rounds, "
              "therapist app in-process (test client), PostgreSQL embedded (Unix socket)")
        for round_number in range(1, rounds + 1):
            batches = batches_of(generate(COUNT, mid_ratio=MID_RATIO, seed=round_number))
            with raw.cursor() as cur:
                cur.execute("TRUNCATE bench_raw_participants")
            raw.commit()
            times["first"].append(time_pass(client, headers, batches, 201))
            times["second"].append(time_pass(client, headers, batches, 204))
            times["raw"].append(time_raw_upsert(raw, batches))
            print(f"round {round_number}: first {times['first'][-1]:.3f} s   second {times['second'][-1]:.3f} s   "
                  f"raw upsert {times['raw'][-1]:.3f} s")

        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"median: first {median['first']:.3f} s   second {median['second']:.3f} s   "
              f"raw upsert {median['raw']:.3f} s")
        passed = True
        for name, target in TARGETS.items():
            # Per round, then the median: a round's three timings are taken back to back, so a
            # machine that gets busier between rounds moves both sides of its ratio alike.
            ratio = statistics.median(ours / raw for ours, raw in zip(times[name], times["raw"], strict=True))
            verdict = "PASS" if ratio <= target else "FAIL"
            passed &= verdict == "PASS"
            print(f"{name}/raw = {ratio:.1f}x   (median of the rounds' ratios; target <= {target:.0f}x)   {verdict}")
        return 0 if passed else 1
    finally:
        raw.close()
        if app is not None:
            with app.app_context():
                from shared.extensions import db

                db.engine.dispose()
        drop_database(base_url, DATABASE_NAME)
        server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
