"""The appointment write path against the upstream's own stack (issue 23; run by hand, not in CI):

    .venv/bin/python bench/api_write.py [--rounds 2] [--seconds 15] [--connections 8 32]

Three systems do the same work on the same database, one after the other, in each round:
- **ours**: the therapist service started as the Dockerfile starts it (`gunicorn -c gunicorn.conf.py`,
  `SERVICE_APP`, the defaults of gunicorn.conf.py), with a service client from a clients file
  holding `appointments:write` (SPEC §11), as production runs;
- **peer**: `../shared/peers/appointments-fastify/server.js` (Fastify + `pg`, two cluster workers),
  copied to `var/fastify-peer` and `npm install`ed there once (`../shared` is read-only);
- **pgbench**: the peer's `raw_upsert.sql`, the same transaction with no HTTP and no Python: the
  limit of this machine.

`wrk` drives ours and the peer with the peer's `post_new.lua` (every request a new appointment in
one of 50 practices, never overlapping: every answer must be 201). Before each run the three
tables (`appointments`, `appointment_versions`, `event_outbox`) are emptied, so each starts from
the same state. It prints requests/s, p50 and p99 of every run, then per connection count the
ratios ours ÷ peer and ours ÷ pgbench of each round (only ratios taken in one run mean anything on
a shared machine), and checks every answer: wrk must count no error, and the table must hold
exactly one version-1 appointment per request answered. Each run of ours and the peer also says
how its connections sat in the server's processes two seconds in (`by process 5/3`, from `ss`):
gunicorn's workers each listen on a socket of their own and the kernel picks one by a hash, so the
split, and with it throughput and p99, changes from run to run.

Needs `wrk` (Debian: `apt-get install wrk`), `pgbench` (PostgreSQL's client tools) and Node.js
with npm; it says what is missing. The database is an embedded PostgreSQL in ./var/bench-postgres
(as the other benches), or `--database-url` names a server (a database of its own is made there).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import psycopg2
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the packages live next to bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_crud import free_port, stop  # noqa: E402

from shared.devdb import drop_database, ensure_database, start_embedded  # noqa: E402

VAR = ROOT / "var"
BIN = Path(sys.executable).parent
PEER_SOURCE = ROOT.parent / "shared" / "peers" / "appointments-fastify"
PEER = VAR / "fastify-peer"
DATABASE_NAME = "curavani_bench_write"
TABLES = "therapist_service.appointments, therapist_service.appointment_versions, therapist_service.event_outbox"
WRK_LINE = re.compile(r"rps=([\d.]+) p50=([\d.]+)ms p99=([\d.]+)ms errors=(\d+)")


@dataclass
class Run:
    system: str
    connections: int
    rate: float  # requests (or transactions) per second
    p50_ms: float
    p99_ms: float
    problems: str = ""  # what was wrong with the answers, if anything
    spread: str = ""  # how the connections sat in the server's processes, e.g. "4/4"

    def line(self) -> str:
        verdict = f"   !! {self.problems}" if self.problems else ""
        spread = f"   by process {self.spread}" if self.spread else ""
        return (f"   {self.system:<8} {self.connections:3d} connections   {self.rate:7.0f}/s   "
                f"p50 {self.p50_ms:6.1f} ms   p99 {self.p99_ms:6.1f} ms{spread}{verdict}")


# ---- what is needed ------------------------------------------------------------------------------

def missing_tools() -> list[str]:
    advice = {"wrk": "apt-get install wrk", "pgbench": "apt-get install postgresql-client",
              "node": "install Node.js 20", "npm": "install npm (with Node.js)"}
    return [f"{tool}: {how}" for tool, how in advice.items() if shutil.which(tool) is None]


def install_peer() -> None:
    """The peer, copied out of the read-only ../shared and `npm install`ed once."""
    if (PEER / "node_modules" / "fastify").is_dir():
        return
    if not PEER_SOURCE.is_dir():
        raise SystemExit(f"the peer is not at {PEER_SOURCE} (../shared beside the checkout)")
    shutil.copytree(PEER_SOURCE, PEER, dirs_exist_ok=True)
    print(f"npm install --prefix {PEER} (once)")
    subprocess.run(["npm", "install", "--prefix", str(PEER), "--no-audit", "--no-fund"], check=True)


# ---- the servers ---------------------------------------------------------------------------------

def start_ours(database_url: str, token: str, port: int, log_file, settings: dict[str, str]) -> subprocess.Popen:
    """As the Dockerfile's CMD, with a service client that may write appointments (any practice);
    `settings` (from `--set`) on top, e.g. to compare worker models."""
    clients = VAR / "bench-write-clients.toml"
    clients.write_text(f'[clients.calendar]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
                       'scopes = ["appointments:write"]\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith("GUNICORN_")}
    env.update({"DATABASE_URL": database_url, "AUTH_CLIENTS_FILE": str(clients), "IMPORTS_ENABLED": "false",
                "LOG_LEVEL": "WARNING", "HOST": "127.0.0.1", "PORT": str(port),
                "SERVICE_APP": "therapist_service.app:create_app()", **settings})
    return subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], env=env, cwd=ROOT,
                            stdout=log_file, stderr=log_file, process_group=0)


def start_peer(database_url: str, token: str, port: int, log_file) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": database_url, "TOKEN": token, "PORT": str(port)}
    return subprocess.Popen(["node", str(PEER / "server.js")], env=env, cwd=PEER,
                            stdout=log_file, stderr=log_file, process_group=0)


def wait_until_healthy(base_url: str, process: subprocess.Popen, name: str, token: str, timeout: float = 60) -> None:
    """Until /health answers 200 (the peer asks for the token there too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}; see var/bench-write-*.log")
        try:
            if requests.get(f"{base_url}/health", headers={"Authorization": f"Bearer {token}"},
                            timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer /health in time")


# ---- the runs ------------------------------------------------------------------------------------

def empty_tables(dsn: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TABLES}")
    conn.close()


def written(dsn: str) -> tuple[int, int]:
    """How many appointments are stored, and how many of them are not at version 1."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*), count(*) FILTER (WHERE version <> 1) FROM therapist_service.appointments")
        total, updated = cursor.fetchone()
    conn.close()
    return total, updated


def connection_spread(port: int) -> str:
    """How many established connections to `port` each process holds, largest first ("5/3"): the
    kernel spreads gunicorn's `reuse_port` sockets by a hash, so two runs can split differently,
    and the split moves throughput and p99 (docs/benchmarks.md). Empty where `ss` is missing."""
    if shutil.which("ss") is None:
        return ""
    listing = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, check=False).stdout
    counts = sorted(Counter(re.findall(r"pid=(\d+)", listing)).values(), reverse=True)
    return "/".join(map(str, counts))


def run_wrk(system: str, base_url: str, token: str, connections: int, seconds: int, dsn: str) -> Run:
    empty_tables(dsn)
    load = subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                             "-s", str(PEER / "post_new.lua"), base_url],
                            env={**os.environ, "TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(min(2.0, seconds / 2))  # the connections are open by then
    spread = connection_spread(int(base_url.rsplit(":", 1)[1]))
    stdout, stderr = load.communicate()
    if load.returncode:
        raise RuntimeError(f"wrk failed ({load.returncode}):\n{stdout}\n{stderr}")
    found = WRK_LINE.search(stdout)
    if found is None:
        raise RuntimeError(f"wrk printed no summary:\n{stdout}\n{stderr}")
    rate, p50, p99, errors = float(found[1]), float(found[2]), float(found[3]), int(found[4])
    requests_done = re.search(r"(\d+) requests in", stdout)
    answered = int(requests_done[1]) if requests_done else -1
    total, updated = written(dsn)
    problems = []
    if errors:
        said = [line.strip() for line in stdout.splitlines() if "errors:" in line or "Non-2xx" in line]
        problems.append(f"{errors} answers were not 2xx or failed ({'; '.join(said)})")
    if updated or total < answered - connections:  # requests cut off at the end may have written
        problems.append(f"{answered} answered, {total} new appointments stored, {updated} not at version 1")
    return Run(system, connections, rate, p50, p99, "; ".join(problems), spread)


def run_pgbench(dsn: str, connections: int, seconds: int) -> Run:
    """The peer's raw transaction; p50/p99 from pgbench's per-transaction log."""
    empty_tables(dsn)
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder) / "tx"
        result = subprocess.run(
            ["pgbench", "-n", "-c", str(connections), "-j", "2", "-T", str(seconds), "-l",
             "--log-prefix", str(prefix), "-f", str(PEER / "raw_upsert.sql"), dsn],  # a URI is a database name
            capture_output=True, text=True, check=True)
        latencies = sorted(int(line.split()[2]) / 1000 for log in Path(folder).glob("tx*")
                           for line in log.read_text().splitlines())
    found = re.search(r"tps = ([\d.]+)", result.stdout)
    if found is None or not latencies:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    problems = f"{failed[1]} transactions failed" if failed and int(failed[1]) else ""

    def at(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))]

    return Run("pgbench", connections, float(found[1]), at(0.50), at(0.99), problems)


def report(runs: list[Run], connections: list[int]) -> bool:
    """The ratios of each round and their medians; True when every run's answers were right."""
    print("\nratios, round by round (ours ÷ peer in requests/s and in p99; ours ÷ pgbench in requests/s):")
    for count in connections:
        of = {name: [run for run in runs if run.system == name and run.connections == count]
              for name in ("ours", "peer", "pgbench")}
        by_rate = [o.rate / p.rate for o, p in zip(of["ours"], of["peer"], strict=True)]
        by_p99 = [o.p99_ms / p.p99_ms for o, p in zip(of["ours"], of["peer"], strict=True)]
        by_raw = [o.rate / r.rate for o, r in zip(of["ours"], of["pgbench"], strict=True)] if of["pgbench"] else [math.nan]
        print(f"   {count:3d} connections: ours ÷ peer {', '.join(f'{x:.2f}' for x in by_rate)} "
              f"(median {median(by_rate):.2f}; target ≥ 0.70)   p99 ours ÷ peer "
              f"{', '.join(f'{x:.2f}' for x in by_p99)}   ours ÷ pgbench {', '.join(f'{x:.2f}' for x in by_raw)}")
    ours = {count: median(run.rate for run in runs if run.system == "ours" and run.connections == count)
            for count in connections}
    print("   ours, median requests/s by connections: "
          + ", ".join(f"{count}: {rate:.0f}" for count, rate in ours.items()))
    bad = [run for run in runs if run.problems]
    print("every answer as expected" if not bad else f"{len(bad)} runs had wrong answers (marked !!)")
    return not bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--database-url", help="a PostgreSQL server to use instead of the embedded one")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of our service, e.g. GUNICORN_WORKERS=4 (default: gunicorn.conf.py's)")
    parser.add_argument("--skip-pgbench", action="store_true", help="ours and the peer only (no ratios to pgbench)")
    args = parser.parse_args()
    if missing := missing_tools():
        print("bench/api_write.py needs:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    install_peer()
    VAR.mkdir(exist_ok=True)
    server = None if args.database_url else start_embedded(VAR / "bench-postgres")
    base = args.database_url or server.get_uri()
    database_url = ensure_database(base, DATABASE_NAME)
    dsn = database_url.replace("postgresql+psycopg2://", "postgresql://")
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "DATABASE_URL": database_url, "API_TOKENS": f"migrate:{token}"}
    subprocess.run([str(BIN / "flask"), "--app", "therapist_service", "db", "upgrade"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    ours_port, peer_port = free_port(), free_port()
    runs: list[Run] = []
    with (VAR / "bench-write-ours.log").open("w") as ours_log, (VAR / "bench-write-peer.log").open("w") as peer_log:
        ours = start_ours(database_url, token, ours_port, ours_log, dict(item.split("=", 1) for item in args.set))
        peer = start_peer(dsn, token, peer_port, peer_log)
        try:
            wait_until_healthy(f"http://127.0.0.1:{ours_port}", ours, "our service", token)
            wait_until_healthy(f"http://127.0.0.1:{peer_port}", peer, "the peer", token)
            print(f"{args.rounds} rounds, {args.seconds} s per run, connections {args.connections}"
                  + (f", ours with {' '.join(args.set)}" if args.set else ""))
            for number in range(1, args.rounds + 1):
                print(f"round {number}")
                for count in args.connections:
                    for run in (lambda: run_wrk("ours", f"http://127.0.0.1:{ours_port}", token, count,
                                                args.seconds, dsn),
                                lambda: run_wrk("peer", f"http://127.0.0.1:{peer_port}", token, count,
                                                args.seconds, dsn),
                                *(() if args.skip_pgbench else (lambda: run_pgbench(dsn, count, args.seconds),))):
                        runs.append(run())
                        print(runs[-1].line(), flush=True)
        finally:
            stop(ours)
            stop(peer)
    if server is not None:
        drop_database(base, DATABASE_NAME)
        server.cleanup()
    return 0 if report(runs, args.connections) else 1


if __name__ == "__main__":
    sys.exit(main())
