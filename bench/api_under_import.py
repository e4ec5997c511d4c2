"""GET-by-id latency of the therapist API, idle and while a 45,000-therapist file imports
(run by hand, not in CI):

    .venv/bin/python bench/api_under_import.py [--therapists 45000] [--rate 100] [--seconds 15]

It runs the therapist service under gunicorn (2 workers × 4 threads, importer on, watching a
folder) against an embedded PostgreSQL, seeds therapists through a small import, then offers
GET /api/therapists/<id> open-loop at a fixed rate: once while nothing imports, and once while the
big scrape file imports (the file is dropped into the watched folder and the phase starts when
its import record says `processing`). Prints p50/p99/max for both phases, the p99 ratio, and
whether it is within the issue's target (≤ 3×). The load generator is `bench/api_crud.py`'s.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_crud import free_port, run_open_loop, stop, wait_until_healthy
from therapist_import import scrape, therapist

from shared.config import sqlalchemy_url
from shared.devdb import drop_database, ensure_database, start_embedded

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
BIN = Path(sys.executable).parent
DATABASE_NAME = "curavani_bench_under_import"
INBOX = VAR / "bench-under-import" / "inbox"
TARGET_RATIO = 3.0


def start_therapist_service(database_url: str, token: str, port: int, log_file) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": database_url, "API_TOKENS": f"bench:{token}", "LOG_LEVEL": "WARNING",
           "IMPORTS_ENABLED": "true", "THERAPIST_IMPORT_DIR": str(INBOX), "THERAPIST_IMPORT_SETTLE_SECONDS": "1",
           "ALERT_OUTBOX_DIR": str(VAR / "bench-under-import" / "outbox")}
    subprocess.run([str(BIN / "flask"), "--app", "therapist_service", "db", "upgrade"],
                   env=env, cwd=ROOT, check=True, stdout=log_file, stderr=log_file)
    env.update(HOST="127.0.0.1", PORT=str(port), GUNICORN_WORKERS="2", GUNICORN_THREADS="4")
    command = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "therapist_service.app:create_app()"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_file, stderr=log_file, process_group=0)


def drop_file(name: str, payload: bytes) -> None:
    temporary = INBOX / f".{name}.part"
    temporary.write_bytes(payload)
    os.replace(temporary, INBOX / name)  # appears whole, as a well-behaved writer does


def import_status(dsn: str, name: str) -> str | None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM therapist_service.imports WHERE name = %s ORDER BY id DESC LIMIT 1", (name,))
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def wait_for(dsn: str, name: str, statuses: tuple[str, ...], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = import_status(dsn, name)
        if status in statuses:
            return status
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not reach {statuses} within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--therapists", type=int, default=45_000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()

    token = secrets.token_urlsafe(24)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = start_embedded(VAR / "bench-postgres")
    drop_database(server.get_uri(), DATABASE_NAME)
    database_url = ensure_database(server.get_uri(), DATABASE_NAME)
    dsn = sqlalchemy_url(database_url).replace("postgresql+psycopg2://", "postgresql://")
    INBOX.mkdir(parents=True, exist_ok=True)
    for old in INBOX.iterdir():
        old.unlink()
    big = scrape([therapist(i) for i in range(args.therapists)], "45XXX")
    log_path = VAR / "bench-under-import.log"
    with log_path.open("w") as log_file:
        gunicorn = start_therapist_service(database_url, token, port, log_file)
        try:
            wait_until_healthy(base_url, gunicorn)
            seed = [therapist(1_000_000 + i) for i in range(1000)]
            drop_file("99999.json", scrape(seed, "99XXX"))
            wait_for(dsn, "99999.json", ("succeeded",), 120)
            with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
                cur.execute("SELECT id FROM therapist_service.therapists ORDER BY id")
                ids = [row[0] for row in cur.fetchall()]
            conn.close()

            local = threading.local()

            def get(i: int) -> int:
                if not hasattr(local, "session"):
                    local.session = requests.Session()
                    local.session.headers["Authorization"] = f"Bearer {token}"
                return local.session.get(f"{base_url}/api/therapists/{ids[i % len(ids)]}", timeout=10).status_code

            idle = run_open_loop("GET idle", get, args.rate, args.seconds)
            drop_file("45000.json", big)
            wait_for(dsn, "45000.json", ("processing", "succeeded", "failed"), 60)
            busy = run_open_loop("GET during 45k import", get, args.rate, args.seconds)
            status_after = import_status(dsn, "45000.json")
            final = wait_for(dsn, "45000.json", ("succeeded", "partial", "failed"), 600)
        finally:
            stop(gunicorn)
    ratio = busy.percentile(0.99) / idle.percentile(0.99)
    print(f"therapist service under gunicorn (2 workers × 4 threads), {args.rate} GET/s for {args.seconds} s each")
    for phase in (idle, busy):
        print(f"{phase.name:<24} {len(phase.latencies_ms)} ok, {phase.failures} failed   "
              f"p50 {phase.percentile(0.5):6.1f} ms   p99 {phase.percentile(0.99):6.1f} ms   "
              f"max {max(phase.latencies_ms):6.1f} ms")
    print(f"import still running when the busy phase ended: {status_after == 'processing'} (final: {final})")
    print(f"p99 ratio {ratio:.2f} (target ≤ {TARGET_RATIO}) {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
