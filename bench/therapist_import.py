"""Therapist import benchmark (run by hand, not in CI):

    .venv/bin/python bench/therapist_import.py [--therapists 45000] [--rounds 3]

Generates one scrape file of 45,000 therapists and the same therapists as 450 files of 100,
imports them with the real runner (`ImportsExtension.run_pass`, as the background thread and
`flask imports run-once` do) into a real embedded PostgreSQL, events recorded in the outbox, and
in the same round times a raw baseline: `json.loads` plus a psycopg2 `execute_values` upsert of
the same rows into a scratch table. Each import runs in a child process of its own so its peak
memory (VmHWM) is its own; the peaks of the worker processes that validate are printed beside
it. Every round prints its figures; then the medians of the rounds' ratios.

Targets (issue 14): single file ≤ 2.5× baseline, 450 files ≤ 3× baseline, peak memory of the
single-file import < 300 MB; (issue 3) a second import of the same therapists with nothing
changed ≤ 1.5× baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = ROOT / "var" / "bench-therapist-import"
TOKEN = "bench-token-0123456789abcdef"
FIRST = ["Anna", "Thomas", "Ayşe", "Lukas", "Petra", "Jürgen", "Marie", "Jonas", "Sophie", "Mehmet"]
LAST = ["Schmitz", "Meyer-Ölbrück", "Yılmaz", "Krause", "Zeevaert", "Becker", "Wagner", "Hoffmann"]
METHODS = ["Verhaltenstherapie", "Tiefenpsychologisch fundierte Psychotherapie", "Analytische Psychotherapie",
           "Systemische Therapie"]


def therapist(i: int, status: str = "new") -> dict:
    rnd = random.Random(i)
    postcode = f"{10000 + i % 89999:05d}"
    return {
        "id": f"praxis{i}", "status": status, "last_modified": "2025-07-02T03:13:24.425333",
        "basic_info": {"salutation": rnd.choice(["Herr", "Frau"]), "title": "Dipl.-Psych.",
                       "first_name": rnd.choice(FIRST), "last_name": f"{rnd.choice(LAST)}{i}"},
        "location": {"street": "Theaterstraße", "house_number": str(1 + i % 120), "postcode": postcode,
                     "city": "Aachen"},
        "contact": {"phone": "0241 4001234", "email": f"praxis{i}@example.de", "fax": None,
                    "website": f"https://praxis{i}.example.de"},
        "professional_info": {"license": "Psychologische Psychotherapeutin",
                              "therapy_methods": rnd.sample(METHODS, 2), "languages": ["Deutsch", "Englisch"],
                              "insurance": ["gesetzlich", "privat"]},
        "availability": {"telephone_hours": {"montag": ["08:00-08:50"], "donnerstag": ["12:10-13:00"]},
                         "accepts_new_patients": True, "waiting_time_weeks": i % 30},
    }


def scrape(items: list[dict], area: str) -> bytes:
    metadata = {"scrape_id": f"{area}_20250702", "scrape_date": "2025-07-02T03:13:24.425211",
                "postcode_area": area, "total_therapists": len(items)}
    return json.dumps({"metadata": metadata, "therapists": items}, ensure_ascii=False).encode()


def write_old(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    past = time.time() - 60
    os.utime(path, (past, past))  # settled already


# ---- child: one measured import ---------------------------------------------------------------------

def child(folder: str, database_url: str) -> None:
    from therapist_service import create_app

    app = create_app({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{TOKEN}", "IMPORTS_ENABLED": False,
                      "THERAPIST_IMPORT_DIR": folder, "THERAPIST_IMPORT_SETTLE_SECONDS": 0,
                      "ALERT_OUTBOX_DIR": str(WORK / "outbox"), "LOG_LEVEL": "WARNING"})
    with app.app_context():
        started = time.perf_counter()
        summary = app.extensions["imports"].run_pass()
        elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "peak_mb": peak_mb(os.getpid()), "workers_peak_mb": workers_peak_mb(),
                      "cpu_seconds": cpu_seconds(os.getpid()), "workers_cpu_seconds": workers_cpu_seconds(),
                      "summary": str(summary)}))


def peak_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM). Not ru_maxrss: Linux keeps that across the exec that
    started the child, so it would show this bench's own peak (it holds the 45,000 therapists)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def workers_peak_mb() -> list[float]:
    """The peak resident memory of each worker process that validated, if any ran."""
    from shared.imports import pool

    return [peak_mb(pid) for pid in list(pool._pool._processes)] if pool._pool is not None else []


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user and system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workers_cpu_seconds() -> float:
    """The CPU time of the worker processes that validated, together."""
    from shared.imports import pool

    return sum(cpu_seconds(pid) for pid in list(pool._pool._processes)) if pool._pool is not None else 0.0


def run_child(folder: Path, database_url: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(folder), database_url],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- baseline ---------------------------------------------------------------------------------------

def baseline(files: list[Path], database_url: str) -> float:
    import psycopg2
    from psycopg2.extras import Json, execute_values

    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_scratch")
        cur.execute("CREATE TABLE bench_scratch (external_id text PRIMARY KEY, last_modified text, "
                    "basic_info jsonb, location jsonb, contact jsonb, professional_info jsonb, availability jsonb)")
    started = time.perf_counter()
    for path in files:
        document = json.loads(path.read_bytes())
        rows = [(t["id"], t["last_modified"], Json(t["basic_info"]), Json(t["location"]), Json(t["contact"]),
                 Json(t["professional_info"]), Json(t["availability"])) for t in document["therapists"]]
        with conn, conn.cursor() as cur:
            execute_values(cur, "INSERT INTO bench_scratch VALUES %s ON CONFLICT (external_id) DO UPDATE SET "
                                "last_modified = EXCLUDED.last_modified, basic_info = EXCLUDED.basic_info, "
                                "location = EXCLUDED.location, contact = EXCLUDED.contact, "
                                "professional_info = EXCLUDED.professional_info, "
                                "availability = EXCLUDED.availability", rows, page_size=1000)
    elapsed = time.perf_counter() - started
    with conn, conn.cursor() as cur:
        cur.execute("DROP TABLE bench_scratch")
    conn.close()
    return elapsed


def reset(database_url: str) -> None:
    import psycopg2

    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE therapist_service.therapists, therapist_service.therapist_versions, "
                    "therapist_service.imports, therapist_service.alerts, therapist_service.importer_state, "
                    "therapist_service.event_outbox RESTART IDENTITY CASCADE")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--therapists", type=int, default=45_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from flask_migrate import upgrade

    from shared.config import sqlalchemy_url
    from shared.devdb import ensure_database, start_embedded
    from therapist_service import create_app

    server = start_embedded(ROOT / "var" / "bench-postgres")
    database_url = ensure_database(server.get_uri(), "bench_therapist_import")
    app = create_app({"DATABASE_URL": database_url, "API_TOKENS": f"bench:{TOKEN}", "IMPORTS_ENABLED": False,
                      "LOG_LEVEL": "WARNING"})
    with app.app_context():
        upgrade()
    dsn = sqlalchemy_url(database_url).replace("postgresql+psycopg2://", "postgresql://")

    shutil.rmtree(WORK, ignore_errors=True)
    single, many, again = WORK / "single", WORK / "many", WORK / "again"
    for folder in (single, many, again):
        folder.mkdir(parents=True)
    n = args.therapists
    items = [therapist(i) for i in range(n)]
    write_old(single / "52074.json", scrape(items, "52XXX"))
    for start in range(0, n, 100):
        write_old(many / f"{10000 + start // 100:05d}.json", scrape(items[start:start + 100], f"{start}"))
    unchanged = [dict(t, status="unchanged") for t in items]
    again_file = again / "52074.json"
    write_old(again_file, scrape(unchanged, "52XXX").replace(b'"2025-07-02T03:13:24.425211"',
                                                             b'"2025-07-09T03:13:24.425211"', 1))
    size_mb = (single / "52074.json").stat().st_size / 1e6
    print(f"{n} therapists; single file {size_mb:.1f} MB; {len(list(many.iterdir()))} files of 100")

    targets = {"single": 2.5, "many": 3.0, "again": 1.5}
    labels = {"single": "single file, 45k new", "many": "450 files of 100, new",
              "again": "single file again, unchanged"}
    ratios: dict[str, list[float]] = {kind: [] for kind in targets}
    peaks: list[float] = []
    for round_ in range(1, args.rounds + 1):
        # Each import next to its own baseline, so both meet the same moment of the machine.
        base_single = baseline([single / "52074.json"], dsn)
        reset(dsn)
        first = run_child(single, database_url)
        base_many = baseline(sorted(many.iterdir()), dsn)
        reset(dsn)
        split = run_child(many, database_url)
        second = run_child(again, database_url)  # the same therapists again, nothing changed
        peaks.append(first["peak_mb"])
        print(f"round {round_}:")
        for kind, result, base in (("single", first, base_single), ("many", split, base_many),
                                   ("again", second, base_single)):
            ratios[kind].append(result["seconds"] / base)
            workers = ", ".join(f"{mb:.0f}" for mb in result["workers_peak_mb"]) or "none"
            print(f"  {labels[kind]:<30} {result['seconds']:7.2f} s  baseline {base:6.2f} s  "
                  f"ratio {ratios[kind][-1]:5.2f}  cpu {result['cpu_seconds']:.1f} s + workers "
                  f"{result['workers_cpu_seconds']:.1f} s  peak {result['peak_mb']:.0f} MB (workers {workers} MB)  "
                  f"[{result['summary']}]")

    print(f"medians of {args.rounds} rounds ({n} therapists, events on):")
    for kind, target in targets.items():
        ratio = statistics.median(ratios[kind])
        print(f"  {labels[kind]:<30} ratio {ratio:5.2f} (rounds {min(ratios[kind]):.2f}–{max(ratios[kind]):.2f}; "
              f"target ≤ {target}) {'PASS' if ratio <= target else 'FAIL'}")
    peak = statistics.median(peaks)
    print(f"  peak memory, single-file import {peak:.0f} MB (target < 300 MB) {'PASS' if peak < 300 else 'FAIL'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
