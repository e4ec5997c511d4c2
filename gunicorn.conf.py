"""gunicorn settings for both services (SPEC §4, §7.4). Used by the Docker image, `make run` and the tests:

    gunicorn -c gunicorn.conf.py "patient_service.app:create_app()"
    SERVICE_APP="therapist_service.app:create_app()" gunicorn -c gunicorn.conf.py

Read from the environment, through the services' own settings (`shared.config.ServerSettings`,
so a malformed value stops gunicorn with the same one-line error as the app): `HOST` and `PORT`
(the bind address; the port defaults to the service's own, 5001 or 5002), `GUNICORN_WORKERS` (2),
`GUNICORN_THREADS` (4), `GUNICORN_TIMEOUT` (60 s), `GUNICORN_GRACEFUL_TIMEOUT` (30 s). Also
`SERVICE_APP` (the app, when it is not given on the command line), `LOG_FORMAT` (json: gunicorn's
own lines are JSON too) and `PROMETHEUS_MULTIPROC_DIR`.

Request limits (fixed, not from the environment): a request line of at most 8190 bytes
(`limit_request_line`, gunicorn's largest; the default 4094 is short for a filtered list with long
names URL-encoded), header lines of at most 8190 bytes (`limit_request_field_size`: a bearer token
and an `If-Match` list fit with room), at most 100 header fields. Longer: 414 and 431, written by
gunicorn before the app sees the request, as problem details like every other error (below).

What the hooks do:
- `on_starting`: a port another process listens on is refused (see `reuse_port`);
- metrics: every worker counts into files in `PROMETHEUS_MULTIPROC_DIR` (a private temporary
  folder when unset), emptied when the master starts; a dead worker's gauges are dropped;
- `when_ready` / `post_fork`: a master that loaded the app (`--preload`) stops its background
  components (importer, event relay) and lets go of its connections; each worker it forks drops
  the connections it inherited and starts them again; without `--preload` each worker creates
  the app itself and there is nothing to drop;
- `post_worker_init`: the loaded app is frozen out of the garbage collector's walks (`gc.freeze`);
- `worker_exit` / `on_exit`: the background components stop cleanly (the current file or batch
  finishes, the advisory locks are released at once, so a standby takes over within a second
  instead of waiting for the connection to die).
The life cycle itself is written down once, in shared/background/__init__.py.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from gunicorn import util as gunicorn_util

from shared.config import ServerSettings

DEFAULT_PORTS = {"patient_service": 5001, "therapist_service": 5002}
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def _service() -> str | None:
    """Which service this master runs, from SERVICE_APP or the command line."""
    said = " ".join([os.environ.get("SERVICE_APP", ""), *sys.argv[1:]])
    return next((name for name in DEFAULT_PORTS if name in said), None)


# ---- serving ----------------------------------------------------------------------------------

if os.environ.get("SERVICE_APP"):
    wsgi_app = os.environ["SERVICE_APP"]
SERVICE = _service()
SERVER = ServerSettings.from_env(default_port=DEFAULT_PORTS.get(SERVICE, 8000))
bind = [f"{SERVER.HOST}:{SERVER.PORT}"]
workers = SERVER.GUNICORN_WORKERS
threads = SERVER.GUNICORN_THREADS  # gthread: requests wait on the database, not the CPU
worker_class = "gthread" if threads > 1 else "sync"
timeout = SERVER.GUNICORN_TIMEOUT
graceful_timeout = SERVER.GUNICORN_GRACEFUL_TIMEOUT  # in-flight requests and the current import file
keepalive = 5
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new connections
# over them. On one shared socket the worker that wakes first takes a connection whether or not its
# threads are free, and a client's keep-alive connections can all end up in one process, which runs
# Python on one core (bench/api_write.py at 8 connections: 8 on one worker and the other idle, a
# quarter of the machine unused). The price: a worker that dies drops the connections still queued
# for it, and a second master on the same port would share it silently, which `on_starting` refuses.
reuse_port = True
# Request lines carry query strings, and those can hold patient data (?email=…): no access log.
# /metrics counts requests by route and status instead.
accesslog = None
errorlog = "-"
control_socket_disable = True  # two masters on one host would share ~/.gunicorn/gunicorn.ctl
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # the worker heartbeat file; a disk-backed /tmp can stall it
proc_name = SERVICE or "curavani"
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 100

if (os.environ.get("LOG_FORMAT") or "").strip().lower() == "json":
    # gunicorn's own lines ("Booting worker …") as JSON too; the app adds its handler to the root.
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json",
                              "stream": "ext://sys.stderr"}},
        "formatters": {"json": {"()": "shared.logs.JsonLineFormatter", "service": SERVICE}},
    }


# ---- gunicorn's own error answers ------------------------------------------------------------
# A request gunicorn refuses before the app sees it (414, 431, a malformed request line: 400) is
# answered by `gunicorn.util.write_error`, as HTML. gunicorn has no setting or hook for that answer,
# so the function is replaced here — in the master, and so in every worker it forks — by one that
# writes the same status as `application/problem+json`.

def _problem_error(sock, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"type": "about:blank", "title": reason, "status": status_int, "detail": mesg}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin1") + body)


gunicorn_util.write_error = _problem_error


class _NoRequestContent(logging.Filter):
    """gunicorn's own lines about a refused or failed request quote the request line or a header
    ("Invalid HTTP request line: 'GET /api/patients?email=…'"), and a query string can hold patient
    data: quoted parts and query strings are cut out of them."""

    REQUEST_CONTENT = re.compile(r"'[^']*'|\"[^\"]*\"|\?\S*")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.REQUEST_CONTENT.sub("…", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _keep_request_content_out_of_logs() -> None:
    """On gunicorn's error log of this process (its logging is set up by now)."""
    error_log = logging.getLogger("gunicorn.error")
    if not any(isinstance(f, _NoRequestContent) for f in error_log.filters):
        error_log.addFilter(_NoRequestContent())


# ---- metrics from every worker ----------------------------------------------------------------
# Set before any worker imports prometheus_client, which reads the variable once at import. This
# file is read again on a reload (SIGHUP): the folder is prepared once per master.

if os.environ.get("CURAVANI_METRICS_MASTER") != str(os.getpid()):
    os.environ["CURAVANI_METRICS_MASTER"] = str(os.getpid())
    if os.environ.get(METRICS_DIR):
        _metrics_dir, _own_metrics_dir = Path(os.environ[METRICS_DIR]), False
        _metrics_dir.mkdir(parents=True, exist_ok=True)
        for _stale in _metrics_dir.glob("*.db"):  # a previous run's counts are not ours
            _stale.unlink()
    else:
        _metrics_dir, _own_metrics_dir = Path(tempfile.mkdtemp(prefix="curavani-metrics-")), True
        os.environ[METRICS_DIR] = str(_metrics_dir)
        os.environ["CURAVANI_METRICS_DIR_OWNED"] = "1"


def on_starting(server) -> None:
    """In the master, before anything is bound: refuse a port another process listens on. With
    `reuse_port` the workers' own sockets would join that listener and share its traffic instead of
    failing; a plain bind (as without it) fails as it should: "Address already in use"."""
    for address in server.cfg.address:
        if not isinstance(address, tuple):
            continue  # a unix socket: gunicorn binds it once, in the master
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                raise SystemExit(f"cannot listen on {address[0]}:{address[1]}: {error.strerror}") from None


def child_exit(server, worker) -> None:
    """In the master, when a worker has exited (however): drop its live gauges (lock held, files waiting)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# ---- the app in each worker -------------------------------------------------------------------

def _loaded_app(server):
    """The Flask app the master loaded (`--preload`), or None."""
    return getattr(server.app, "callable", None)


def when_ready(server) -> None:
    """In the master, before the first fork. With `--preload` the master created the app and with it
    started the background components; the master must not run them (it would hold the locks while
    its workers stand by), so it stops them and lets go of its database connections."""
    from shared.background import stop_background

    app = _loaded_app(server)
    if app is None or not hasattr(app, "extensions"):
        return
    if stop_background(app):
        app.extensions["background_start_after_fork"] = True
    _dispose_engine(app, close=True)


def post_fork(server, worker) -> None:
    """In a new worker. Connections inherited from the master are the master's: forget them without
    closing them (closing would end the master's session), and start this worker's components."""
    from shared.background import start_background

    _keep_request_content_out_of_logs()
    app = _loaded_app(server)
    if app is None or not hasattr(app, "extensions"):
        return  # not preloaded: the worker creates its app (engine, importer) after this
    _dispose_engine(app, close=False)
    if app.extensions.pop("background_start_after_fork", False):
        start_background(app)


def _dispose_engine(app, *, close: bool) -> None:
    from shared.extensions import db

    with app.app_context():
        db.engine.dispose(close=close)


def post_worker_init(worker) -> None:
    """In a worker whose app is loaded: what exists now (the app, its routes, schemas and table
    metadata, ~160,000 objects) lives as long as the worker, so it is moved out of the garbage
    collector's sight (`gc.freeze`). Otherwise every oldest-generation collection walks it all,
    a 100 ms pause of every thread of the worker, now and then, in the middle of requests
    (bench/api_write.py's p99)."""
    gc.freeze()


def worker_exit(server, worker) -> None:
    """In the worker, on its way out: stop its components so the locks are released now."""
    from shared.background import stop_background

    app = getattr(worker, "wsgi", None)
    if hasattr(app, "extensions"):
        stop_background(app)


def on_exit(server) -> None:
    """In the master, last: the components a preloaded master may still run, and our metrics folder."""
    from shared.background import stop_background

    app = _loaded_app(server)
    if hasattr(app, "extensions"):
        stop_background(app)
    if os.environ.get("CURAVANI_METRICS_DIR_OWNED") and os.environ.get(METRICS_DIR):
        shutil.rmtree(os.environ[METRICS_DIR], ignore_errors=True)
