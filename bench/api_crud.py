"""Load test of the patient API at a fixed offered rate (run by hand; not part of CI):

    .venv/bin/python bench/api_crud.py

It starts the patient service under gunicorn (2 workers × 4 threads, importers off) against an
embedded PostgreSQL in ./var/bench-postgres, in a fresh database of its own, seeds 1000 patients
through the API, then offers GET /api/patients/<id> at 200 requests/s for 15 s and, separately,
POST /api/patients at 50 requests/s. The load is open-loop: every request is sent at its
scheduled time whether or not earlier ones have answered, and its latency is counted from that
scheduled time, so a slow server cannot hide its queue (no coordinated omission). It prints the
rate achieved, p50/p99/max latency per phase, and whether GET p99 ≤ 20 ms at 200 requests/s (the
target from the issue).

Then the cost of the access log (SPEC §10.3): a second gunicorn serves the same database with the
log not written (`create_app_without_access_log`, this bench's own baseline), and one more GET
phase at 200 requests/s sends its requests to the two in turn, so both meet the same moments of a
shared machine; it prints both p99s and their ratio against the target of at most 20 % slower.
When the machine cannot keep up with 200/s (the latencies are then the queue, not the servers),
it says so and compares again at 50/s for 60 s. Then it stops gunicorn and the database.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from shared.devdb import drop_database, ensure_database, start_embedded

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
BIN = Path(sys.executable).parent
DATABASE_NAME = "curavani_bench"
WORKERS, THREADS = 2, 4
SEED_PATIENTS = 1000
GET_RATE, POST_RATE, DURATION_SECONDS = 200, 50, 15
CLIENT_THREADS = 32
TARGET_P99_MS = 20.0
# The access log comparison: the two servers take turns, request by request; (rate, seconds), the
# second only when a shared machine cannot keep up with the first (longer: as many samples for p99).
COMPARE_RATES = ((GET_RATE, 30), (50, 60))
TARGET_LOG_RATIO = 1.20


@dataclass
class Phase:
    name: str
    latencies_ms: list[float]  # successful requests only
    failures: int
    elapsed_seconds: float  # from the first scheduled send to the last answer
    by_index: list[float | None] = field(default_factory=list)  # request i's latency; None: failed

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of the successful requests' latencies."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    def report(self, offered_rate: int) -> str:
        sent = len(self.latencies_ms) + self.failures
        return (f"{self.name:<26} offered {offered_rate}/s for {DURATION_SECONDS} s: {sent} sent, "
                f"{self.failures} failed, achieved {sent / self.elapsed_seconds:.1f}/s   "
                f"p50 {self.percentile(0.50):.1f} ms   p99 {self.percentile(0.99):.1f} ms   "
                f"max {max(self.latencies_ms, default=math.nan):.1f} ms")


# ---- the service under test --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def create_app_without_access_log():
    """The patient service with its access log not written: the baseline of the comparison only."""
    from patient_service import create_app, privacy

    privacy.RECORDING = False
    return create_app()


def start_patient_service(database_url: str, token: str, port: int, log_file, *,
                          access_log: bool = True) -> subprocess.Popen:
    # The token is a service client's with the scopes the load needs (SPEC §11), as production
    # runs: each request pays for the clients file's check and the scope check.
    clients = VAR / "bench-clients.toml"
    clients.write_text(f'[clients.bench]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
                       'scopes = ["patients:read", "patients:write", "patients:audit"]\n')
    env = {**os.environ, "DATABASE_URL": database_url, "AUTH_CLIENTS_FILE": str(clients),
           "IMPORTS_ENABLED": "false", "LOG_LEVEL": "WARNING"}
    subprocess.run([str(BIN / "flask"), "--app", "patient_service", "db", "upgrade"],
                   env=env, cwd=ROOT, check=True, stdout=log_file, stderr=log_file)
    app = ("patient_service.app:create_app()" if access_log
           else "api_crud:create_app_without_access_log()")
    command = [str(BIN / "gunicorn"), app, "--pythonpath", str(ROOT / "bench"),
               "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS), "--threads", str(THREADS),
               "--no-control-socket"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_file, stderr=log_file,
                            process_group=0)


def wait_until_healthy(base_url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {process.returncode}")
        try:
            if requests.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or a busy machine
            pass
        time.sleep(0.2)
    raise RuntimeError("the patient service did not answer /health in time")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---- requests ----------------------------------------------------------------------------------

class Client:
    """One keep-alive `requests.Session` per client thread."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self._local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers.update(self.headers)
        return self._local.session

    def get_patient(self, patient_id: int) -> int:
        return self.session().get(f"{self.base_url}/api/patients/{patient_id}", timeout=10).status_code

    def access_log_total(self, patient_id: int) -> int:
        response = self.session().get(f"{self.base_url}/api/patients/{patient_id}/access-log", timeout=10)
        response.raise_for_status()
        return json.loads(response.headers["X-Pagination"])["total"]

    def create_patient(self, number: int) -> requests.Response:
        return self.session().post(f"{self.base_url}/api/patients", json=patient(number), timeout=10)


def patient(number: int) -> dict:
    """A plausible, unique patient: the duplicate rule keys on e-mail and name."""
    return {
        "anrede": "Frau", "geschlecht": "weiblich", "vorname": f"Erika{number}",
        "nachname": "Musterfrau", "geburtsdatum": "1985-03-14",
        "email": f"erika.{number}.{secrets.token_hex(4)}@example.de", "telefon": "+49 241 123456",
        "strasse": "Pontstraße 1", "plz": "52062", "ort": "Aachen", "krankenkasse": "AOK",
        "symptome": ["Schlafstörungen", "Niedergeschlagenheit"],
        "erfahrung_mit_psychotherapie": False, "offen_fuer_gruppentherapie": True,
        "bevorzugtes_therapieverfahren": ["Verhaltenstherapie"],
        "bevorzugtes_therapeutengeschlecht": "egal",
        "zeitliche_verfuegbarkeit": {"montag": ["09:00-12:00"], "mittwoch": ["14:00-18:00"]},
        "raeumliche_verfuegbarkeit": {"max_km": 15}, "verkehrsmittel": "ÖPNV",
    }


def seed(client: Client, count: int) -> list[int]:
    def create(number: int) -> int:
        response = client.create_patient(number)
        response.raise_for_status()
        return response.json()["id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(create, range(count)))


# ---- open-loop load ----------------------------------------------------------------------------

def run_open_loop(name: str, send, rate: int, duration: int) -> Phase:
    """Send request `i` at `start + i / rate`, each from a pool thread; time it from then.

    `send(i)` returns the HTTP status; 2xx counts as success.
    """
    count = rate * duration
    latencies: list[float | None] = [None] * count
    finished_at: list[float] = [0.0] * count

    def timed(i: int, scheduled: float) -> None:
        try:
            ok = 200 <= send(i) < 300
        except requests.RequestException:
            ok = False
        finished_at[i] = time.perf_counter()
        latencies[i] = (finished_at[i] - scheduled) * 1000 if ok else None

    start = time.perf_counter() + 0.1
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(timed, i, scheduled)
    successes = [latency for latency in latencies if latency is not None]
    return Phase(name, successes, count - len(successes), max(finished_at) - start, latencies)


# ---- the access log's cost ----------------------------------------------------------------------

def compare_access_log(logged: Client, unlogged: Client, ids: list[int]) -> None:
    """GET p99 with the access log and without it, on one database: the two servers take turns
    request by request, so both meet the same moments of the machine (others' load comes and goes).
    First at GET_RATE; when the machine cannot keep up with that, also at a rate it can."""
    for patient_id in ids[:200]:
        unlogged.get_patient(patient_id)  # its warm-up, as the logged server had
    for rate, seconds in COMPARE_RATES:
        if compare_at(rate, seconds, logged, unlogged, ids):
            return


def compare_at(rate: int, seconds: int, logged: Client, unlogged: Client, ids: list[int]) -> bool:
    """One comparison at `rate`; False when the machine could not keep up (the ratio means nothing)."""
    picks = random.Random(rate)
    servers = (("with", logged), ("without", unlogged))
    chosen = [picks.choice(ids) for _ in range(rate * seconds)]
    phase = run_open_loop("GET both, taking turns", lambda i: servers[i % 2][1].get_patient(chosen[i]),
                          rate, seconds)
    achieved = len(phase.by_index) / phase.elapsed_seconds
    print(f"GET to both servers in turn: offered {rate}/s for {seconds} s, achieved {achieved:.1f}/s")
    pooled = {}
    for turn, (variant, _) in enumerate(servers):
        mine = phase.by_index[turn::2]
        ok = [latency for latency in mine if latency is not None]
        pooled[variant] = Phase(variant, ok, len(mine) - len(ok), phase.elapsed_seconds)
    for variant in ("without", "with"):
        part = pooled[variant]
        print(f"  GET {variant + ' access log':<22} {len(part.latencies_ms)} ok, {part.failures} failed   "
              f"p50 {part.percentile(0.50):.1f} ms   p99 {part.percentile(0.99):.1f} ms")
    if achieved < 0.95 * rate:
        print("  the machine could not keep up: both servers' latencies are the client's queue; no ratio")
        return False
    ratio = pooled["with"].percentile(0.99) / pooled["without"].percentile(0.99)
    met = ratio <= TARGET_LOG_RATIO and not any(part.failures for part in pooled.values())
    print(f"access log cost at {rate}/s: GET p99 with / without = {ratio:.2f} "
          f"(target <= {TARGET_LOG_RATIO:.2f}): {'met' if met else 'NOT met'}; "
          f"entries for patient {ids[0]}: {logged.access_log_total(ids[0])}")
    return True


# ---- the run -----------------------------------------------------------------------------------

def main() -> int:
    token = secrets.token_urlsafe(24)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = VAR / "bench-gunicorn.log"
    server = start_embedded(VAR / "bench-postgres")
    gunicorn = baseline = None
    try:
        drop_database(server.get_uri(), DATABASE_NAME)  # every run starts from an empty database
        database_url = ensure_database(server.get_uri(), DATABASE_NAME)
        with open(log_path, "w") as log_file:
            gunicorn = start_patient_service(database_url, token, port, log_file)
            wait_until_healthy(base_url, gunicorn)
            client = Client(base_url, token)

            began = time.perf_counter()
            ids = seed(client, SEED_PATIENTS)
            print(f"patient service under gunicorn ({WORKERS} workers × {THREADS} threads), "
                  f"{os.cpu_count()} CPUs, service log in {log_path}")
            print(f"seeded {len(ids)} patients in {time.perf_counter() - began:.1f} s")

            picks = random.Random(42)
            for patient_id in ids[:200]:  # warm-up, not measured: connections, caches
                client.get_patient(patient_id)
            chosen = [picks.choice(ids) for _ in range(GET_RATE * DURATION_SECONDS)]
            gets = run_open_loop("GET  /api/patients/<id>", lambda i: client.get_patient(chosen[i]),
                                 GET_RATE, DURATION_SECONDS)
            print(gets.report(GET_RATE))
            posts = run_open_loop("POST /api/patients",
                                  lambda i: client.create_patient(SEED_PATIENTS + i).status_code,
                                  POST_RATE, DURATION_SECONDS)
            print(posts.report(POST_RATE))

            p99 = gets.percentile(0.99)
            met = p99 <= TARGET_P99_MS and gets.failures == 0
            print(f"target GET p99 <= {TARGET_P99_MS:.0f} ms at {GET_RATE} requests/s: "
                  f"{'met' if met else 'NOT met'} (p99 {p99:.1f} ms, {gets.failures} failed)")

            baseline_port = free_port()
            baseline = start_patient_service(database_url, token, baseline_port, log_file, access_log=False)
            wait_until_healthy(f"http://127.0.0.1:{baseline_port}", baseline)
            compare_access_log(client, Client(f"http://127.0.0.1:{baseline_port}", token), ids)
        return 0
    finally:
        if baseline is not None:
            stop(baseline)
        if gunicorn is not None:
            stop(gunicorn)
        drop_database(server.get_uri(), DATABASE_NAME)
        server.cleanup()
        print("gunicorn and the bench database stopped")


if __name__ == "__main__":
    sys.exit(main())
