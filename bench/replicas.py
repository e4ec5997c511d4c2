"""Several workers and replicas on one database, and the importer holder killed midway
(SPEC §7.4; run by hand, not in CI):

    .venv/bin/python bench/replicas.py

It starts an embedded PostgreSQL with its data in ./var/bench-replicas-postgres (a fresh database
each run) and, with gunicorn.conf.py:
- the therapist service: one gunicorn master with 3 workers, watching a folder
  (rescan every 2 s, settle 0.5 s);
- the patient service: two gunicorn masters with 1 worker each on different ports — two
  "replicas" — reading one local folder that behaves like a bucket (poll every 2 s).
It drops 100 therapist scrape files (distinct postcodes, 100 therapists each) and 200 registration
files (`{nachname}_{vorname}_{YYYYMMDD}_{token}.json`, token matching the file), and when about
a third of each service's files is imported it looks up the process holding that service's importer
lock (importer_state.lock_holder, checked against pg_locks) and SIGKILLs it. Once every file is
imported it checks: one succeeded import record per file, no duplicate therapists or patients,
every record at version 1 with one version row, and the lock held by a new process; and prints
the figures. Exit status 0 when every check holds.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.config import sqlalchemy_url  # noqa: E402
from shared.devdb import drop_database, ensure_database, start_embedded  # noqa: E402
from shared.imports.locking import lock_key  # noqa: E402

VAR = ROOT / "var"
BIN = Path(sys.executable).parent
DATA_DIR = VAR / "bench-replicas-postgres"
WORK = VAR / "bench-replicas"
DATABASE_NAME = "curavani_replicas"
THERAPIST_FILES, THERAPISTS_PER_FILE, REGISTRATIONS = 100, 100, 200
KILL_AFTER_FRACTION = 1 / 3
DRAIN_TIMEOUT_SECONDS = 900
RNG = random.Random(20250705)

VORNAMEN = ["Anna", "Lukas", "Petra", "Jonas", "Marie", "Felix", "Sophie", "Paul", "Lea", "Elias", "Emma",
            "Noah", "Mia", "Ben", "Hannah", "Leon", "Lina", "Finn", "Clara", "Tim", "Ayşe", "Jürgen"]
NACHNAMEN = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
             "Hoffmann", "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Braun",
             "Zimmermann", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner", "Yılmaz"]
STRASSEN = ["Hauptstraße", "Bahnhofstraße", "Gartenstraße", "Schulstraße", "Lindenweg", "Kirchplatz",
            "Am Markt", "Theaterstraße", "Jakobstraße", "Pontstraße"]
STAEDTE = ["Aachen", "Köln", "Düren", "Bonn", "Eschweiler", "Stolberg", "Würselen", "Herzogenrath"]
METHODEN = ["Verhaltenstherapie", "Tiefenpsychologisch fundierte Psychotherapie", "Analytische Psychotherapie",
            "Systemische Therapie"]


# ---- data --------------------------------------------------------------------------------------

def ascii_name(name: str) -> str:
    table = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ş": "s", "ı": "i", " ": "-"})
    return name.lower().translate(table)


def scrape_file(number: int) -> tuple[str, dict]:
    postcode = f"{10000 + number * 731:05d}"  # distinct, five digits
    therapists = []
    for index in range(THERAPISTS_PER_FILE):
        female = RNG.random() < 0.6
        first, last = RNG.choice(VORNAMEN), RNG.choice(NACHNAMEN)
        external_id = f"praxis-{postcode}-{index:03d}"
        therapists.append({
            "id": external_id, "status": RNG.choice(["new", "modified", "unchanged"]),
            "last_modified": "2025-07-02T03:13:24.425333",
            "basic_info": {"salutation": "Frau" if female else "Herr",
                           "title": RNG.choice(["Dipl.-Psych.", "Dr.", None]),
                           "first_name": first, "last_name": last},
            "location": {"street": RNG.choice(STRASSEN), "house_number": str(RNG.randint(1, 120)),
                         "postcode": postcode, "city": RNG.choice(STAEDTE)},
            "contact": {"phone": f"0241 {RNG.randint(1000000, 9999999)}", "email": f"{external_id}@example.de",
                        "fax": None, "website": f"https://{external_id}.example.de"},
            "professional_info": {
                "license": "Psychologische Psychotherapeutin" if female else "Psychologischer Psychotherapeut",
                "therapy_methods": RNG.sample(METHODEN, RNG.randint(1, 2)),
                "languages": ["Deutsch"] + (["Englisch"] if RNG.random() < 0.4 else []),
                "insurance": ["gesetzlich", "privat"][: RNG.randint(1, 2)]},
            "availability": {"telephone_hours": {"montag": ["08:00-08:50"], "donnerstag": ["12:10-13:00"]},
                             "accepts_new_patients": RNG.random() < 0.3, "waiting_time_weeks": RNG.randint(0, 30)},
        })
    document = {"metadata": {"scrape_id": f"{postcode}_20250702", "scrape_date": "2025-07-02T03:13:24.425211",
                             "postcode_area": postcode, "total_therapists": len(therapists)},
                "therapists": therapists}
    return f"{postcode}.json", document


def registration_files() -> list[tuple[str, dict]]:
    pairs = RNG.sample([(v, n) for v in VORNAMEN for n in NACHNAMEN], REGISTRATIONS)  # distinct names
    files = []
    for number, (vorname, nachname) in enumerate(pairs):
        token = secrets.token_hex(4)
        registered = datetime(2025, 7, 5, 8, 0, 0) + timedelta(minutes=7 * number)
        birth = date(1950, 1, 1) + timedelta(days=RNG.randint(0, 365 * 55))
        female = vorname in ("Anna", "Petra", "Marie", "Sophie", "Lea", "Emma", "Mia", "Hannah", "Lina", "Clara",
                             "Ayşe")
        document = {
            "patient_data": {
                "anrede": "Frau" if female else "Herr", "geschlecht": "weiblich" if female else "männlich",
                "vorname": vorname, "nachname": nachname, "geburtsdatum": birth.isoformat(),
                "email": f"{ascii_name(vorname)}.{ascii_name(nachname)}.{number}@example.de",
                "telefon": f"+49 241 {RNG.randint(100000, 999999)}",
                "strasse": f"{RNG.choice(STRASSEN)} {RNG.randint(1, 99)}", "plz": f"{52000 + RNG.randint(0, 99):05d}",
                "ort": RNG.choice(STAEDTE), "krankenkasse": RNG.choice(["AOK Rheinland/Hamburg", "TK", "Barmer"]),
                "symptome": RNG.sample(["Niedergeschlagenheit", "Schlafstörungen", "Ängste", "Erschöpfung"], 2),
                "erfahrung_mit_psychotherapie": RNG.random() < 0.5,
                "bevorzugtes_therapieverfahren": [RNG.choice(METHODEN[:2])],
                "bevorzugtes_therapeutengeschlecht": "egal",
                "zeitliche_verfuegbarkeit": {"montag": ["09:00-12:00"], "mittwoch": ["14:00-18:00"]},
                "raeumliche_verfuegbarkeit": {"max_km": RNG.randint(5, 50)},
                "verkehrsmittel": RNG.choice(["ÖPNV", "Auto"]), "offen_fuer_gruppentherapie": RNG.random() < 0.5},
            "consent_metadata": {"ip_address": f"37.201.{RNG.randint(0, 255)}.{RNG.randint(1, 254)}",
                                 "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
                                 "timestamp_utc": (registered - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "consent_version": "2025-06", "datenschutz_akzeptiert": True},
            "registration_timestamp": registered.strftime("%Y-%m-%d %H:%M:%S"),
            "registration_token": token,
        }
        name = f"{ascii_name(nachname)}_{ascii_name(vorname)}_{registered:%Y%m%d}_{token}.json"
        files.append((name, document))
    return files


def drop(folder: Path, name: str, document: dict) -> None:
    temporary = folder / f".{name}.part"  # hidden: neither importer reads it
    temporary.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, folder / name)


# ---- the services ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Master:
    label: str
    port: int
    process: subprocess.Popen


@dataclass
class ServiceRun:
    name: str  # the schema, e.g. "therapist_service"
    files: int
    masters: list[Master] = field(default_factory=list)
    first_drop: float | None = None
    drained_at: float | None = None
    killed_pid: int | None = None
    killed_backend: int | None = None
    killed_at: float | None = None
    killed_after_files: int | None = None
    takeover_seconds: float | None = None
    new_holder: str | None = None


def start_master(label: str, service: str, port: int, workers: int, env: dict[str, str]) -> Master:
    metrics = WORK / "metrics" / label
    log = (WORK / f"{label}.log").open("w")
    env = {**env, "SERVICE_APP": f"{service}.app:create_app()", "PORT": str(port), "HOST": "127.0.0.1",
           "GUNICORN_WORKERS": str(workers), "GUNICORN_THREADS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    process = subprocess.Popen([str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")], env=env, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, process_group=0)
    return Master(label, port, process)


def wait_ready(master: Master, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if master.process.poll() is not None:
            raise RuntimeError(f"{master.label} exited with status {master.process.returncode}; see its log in {WORK}")
        try:
            if requests.get(f"http://127.0.0.1:{master.port}/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{master.label} was not ready within {timeout} s")


def stop(master: Master) -> None:
    if master.process.poll() is None:
        master.process.terminate()
        try:
            master.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.process.kill()
            master.process.wait()


def worker_pids(master: Master) -> set[int]:
    """The master's children (its workers), from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, …
            except OSError:
                continue
            if int(stat[1]) == master.process.pid:
                children.add(int(entry.name))
    return children


# ---- the database ------------------------------------------------------------------------------

def lock_backend(connection, service: str) -> int | None:
    """The PostgreSQL backend holding the service's importer lock, if any."""
    return connection.execute(text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :key "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
        {"key": lock_key(service)}).scalar()


def lock_holder(connection, service: str) -> str | None:
    return connection.execute(text(f"SELECT lock_holder FROM {service}.importer_state WHERE id = 1")).scalar()


def imported_files(connection, service: str) -> int:
    return connection.execute(text(
        f"SELECT count(DISTINCT name) FROM {service}.imports WHERE status = 'succeeded'")).scalar()


def find_holder(connection, run: ServiceRun) -> tuple[int, int]:
    """(worker pid, backend pid) of the process that holds the lock now."""
    deadline = time.monotonic() + 10
    ours = set().union(*(worker_pids(m) for m in run.masters))
    while time.monotonic() < deadline:
        backend, holder = lock_backend(connection, run.name), lock_holder(connection, run.name)
        pid = int(holder.rsplit(":", 1)[1]) if holder else None
        if backend is not None and pid in ours:
            return pid, backend
        time.sleep(0.1)
    raise RuntimeError(f"no live worker of {run.name} is named as the lock holder")


def kill_holder(connection, run: ServiceRun, done: int) -> None:
    run.killed_pid, run.killed_backend = find_holder(connection, run)
    os.kill(run.killed_pid, signal.SIGKILL)
    run.killed_at, run.killed_after_files = time.monotonic(), done
    print(f"  {run.name}: SIGKILL to pid {run.killed_pid}, the importer lock holder, after {done} of "
          f"{run.files} files", flush=True)


def watch_takeover(connection, run: ServiceRun) -> None:
    """Once the lock is held by another backend and importer_state names a new live process."""
    if run.killed_at is None or run.takeover_seconds is not None:
        return
    backend = lock_backend(connection, run.name)
    holder = lock_holder(connection, run.name)
    if backend is not None and backend != run.killed_backend and holder and not holder.endswith(f":{run.killed_pid}"):
        run.takeover_seconds = time.monotonic() - run.killed_at
        run.new_holder = holder


# ---- the run -----------------------------------------------------------------------------------

def checks(connection, therapist_names: list[str], registration_names: list[str], bucket: Path,
           runs: list[ServiceRun]) -> tuple[list[tuple[str, bool, str]], int]:
    """(description, holds, figures) per check, and the number of duplicate records found."""
    results = []

    def succeeded_per_file(service: str, names: list[str]) -> dict[str, int]:
        rows = dict(connection.execute(text(
            f"SELECT name, count(*) FILTER (WHERE status = 'succeeded') FROM {service}.imports GROUP BY name")).all())
        return {name: rows.get(name, 0) for name in names}

    for service, names in (("therapist_service", therapist_names), ("patient_service", registration_names)):
        per_file = succeeded_per_file(service, names)
        wrong = {name: n for name, n in per_file.items() if n != 1}
        results.append((f"{service}: every file has exactly one succeeded import record",
                        not wrong, f"{len(names) - len(wrong)}/{len(names)} files" + (f"; not one: {len(wrong)}"
                                                                                      if wrong else "")))
        statuses = dict(connection.execute(text(
            f"SELECT status, count(*) FROM {service}.imports GROUP BY status")).all())
        retried = connection.execute(text(f"SELECT count(*) FROM {service}.imports WHERE attempts > 1")).scalar()
        results.append((f"{service}: import records by status", True,
                        ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) + f"; {retried} taken up again "
                        "after the kill (attempts > 1)"))

    therapists, distinct_ids = connection.execute(text(
        "SELECT count(*), count(DISTINCT external_id) FROM therapist_service.therapists")).one()
    expected = THERAPIST_FILES * THERAPISTS_PER_FILE
    results.append(("therapists: no duplicates", therapists == distinct_ids == expected,
                    f"{therapists} rows, {distinct_ids} distinct external ids, {expected} expected"))
    patients, distinct_emails = connection.execute(text(
        "SELECT count(*), count(DISTINCT email) FROM patient_service.patients")).one()
    registrations = connection.execute(text("SELECT count(*) FROM patient_service.registrations")).scalar()
    results.append(("patients: no duplicates", patients == distinct_emails == REGISTRATIONS == registrations,
                    f"{patients} patients, {distinct_emails} distinct e-mails, {registrations} registrations, "
                    f"{REGISTRATIONS} expected"))
    for table, versions in (("therapist_service.therapists", "therapist_service.therapist_versions"),
                            ("patient_service.patients", "patient_service.patient_versions")):
        not_one = connection.execute(text(
            f"SELECT count(*) FROM {table} r WHERE r.version <> 1 OR "
            f"(SELECT count(*) FROM {versions} v WHERE v.record_id = r.id) <> 1")).scalar()
        results.append((f"{table}: version 1 and one version row each", not_one == 0,
                        f"{not_one} records otherwise"))
    duplicates = (therapists - distinct_ids) + (patients - distinct_emails)
    left = sorted(p.name for p in bucket.glob("*.json"))
    results.append(("bucket: every imported object deleted", not left, f"{len(left)} left"))
    for run in runs:
        results.append((f"{run.name}: lock taken over by a new process", run.new_holder is not None,
                        f"killed pid {run.killed_pid}; new holder {run.new_holder}; "
                        f"takeover {run.takeover_seconds:.2f} s" if run.takeover_seconds is not None
                        else f"killed pid {run.killed_pid}; no new holder"))
    return results, duplicates


def main() -> int:  # noqa: C901 — a bench script: one story, top to bottom
    shutil.rmtree(WORK, ignore_errors=True)
    inbox, bucket, backup = WORK / "therapist-inbox", WORK / "patient-bucket", WORK / "patient-backup"
    for folder in (inbox, bucket, backup, WORK / "outbox"):
        folder.mkdir(parents=True)
    print(f"bench/replicas.py: PostgreSQL in {DATA_DIR}, logs in {WORK}", flush=True)
    server = start_embedded(DATA_DIR)
    base = server.get_uri()
    drop_database(base, DATABASE_NAME)
    database_url = ensure_database(base, DATABASE_NAME)
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "DATABASE_URL": database_url, "API_TOKENS": f"bench:{token}", "LOG_LEVEL": "INFO",
           "ALERT_OUTBOX_DIR": str(WORK / "outbox"),
           "THERAPIST_IMPORT_DIR": str(inbox), "THERAPIST_IMPORT_RESCAN_SECONDS": "2",
           "THERAPIST_IMPORT_SETTLE_SECONDS": "0.5",
           "PATIENT_IMPORT_SOURCE": str(bucket), "PATIENT_IMPORT_BACKUP_DIR": str(backup),
           "PATIENT_IMPORT_INTERVAL_SECONDS": "2"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for service in ("patient_service", "therapist_service"):
        subprocess.run([str(BIN / "flask"), "--app", service, "db", "upgrade"], env={**env, "IMPORTS_ENABLED": "false"},
                       cwd=ROOT, check=True, capture_output=True)
    therapists = ServiceRun("therapist_service", THERAPIST_FILES)
    patients = ServiceRun("patient_service", REGISTRATIONS)
    runs = [therapists, patients]
    engine = create_engine(sqlalchemy_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        therapists.masters = [start_master("therapists-3-workers", "therapist_service", free_port(), 3, env)]
        patients.masters = [start_master(f"patients-replica-{n}", "patient_service", free_port(), 1, env)
                            for n in (1, 2)]
        for master in therapists.masters + patients.masters:
            wait_ready(master)
        print("  therapist service: 1 master × 3 workers; patient service: 2 masters × 1 worker; all ready",
              flush=True)

        scrape_files = [scrape_file(n) for n in range(THERAPIST_FILES)]
        registrations = registration_files()
        therapists.first_drop = time.monotonic()
        for name, document in scrape_files:
            drop(inbox, name, document)
        patients.first_drop = time.monotonic()
        pending_registrations = list(registrations)
        with engine.connect() as connection:
            deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
            while True:
                # Registrations arrive over ~10 s, as from a busy registration site.
                for name, document in pending_registrations[:10]:
                    drop(bucket, name, document)
                del pending_registrations[:10]
                for run in runs:
                    done = imported_files(connection, run.name)
                    if run.killed_pid is None and done >= run.files * KILL_AFTER_FRACTION:
                        kill_holder(connection, run, done)
                    watch_takeover(connection, run)
                    if run.drained_at is None and done == run.files and run.takeover_seconds is not None:
                        run.drained_at = time.monotonic()
                        print(f"  {run.name}: all {run.files} files imported after "
                              f"{run.drained_at - run.first_drop:.1f} s", flush=True)
                if all(run.drained_at is not None for run in runs) and not list(bucket.glob("*.json")):
                    break
                if time.monotonic() > deadline:
                    print("bench/replicas.py: files still not imported after "
                          f"{DRAIN_TIMEOUT_SECONDS} s", file=sys.stderr)
                    break
                time.sleep(0.5)
            results, duplicates = checks(connection, [n for n, _ in scrape_files], [n for n, _ in registrations],
                                         bucket, runs)
    finally:
        for master in therapists.masters + patients.masters:
            stop(master)
        engine.dispose()
        server.cleanup()

    print()
    print(f"files: {THERAPIST_FILES} therapist files × {THERAPISTS_PER_FILE} therapists, "
          f"{REGISTRATIONS} registration files")
    for run in runs:
        drained = f"{run.drained_at - run.first_drop:.1f} s" if run.drained_at else "not drained"
        takeover = f"{run.takeover_seconds:.2f} s" if run.takeover_seconds is not None else "none"
        print(f"{run.name}: drained in {drained}; holder pid {run.killed_pid} killed after "
              f"{run.killed_after_files} files; takeover {takeover} by {run.new_holder}")
    for description, ok, detail in results:
        print(f"[{'ok' if ok else 'FAIL'}] {description}: {detail}")
    print(f"duplicates found: {duplicates}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
