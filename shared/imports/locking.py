"""The single-runner lock (SPEC §7.4): a PostgreSQL session-level advisory lock held on a
dedicated connection, outside the pool and outside any transaction.

PostgreSQL releases it when the holding process dies or its connection drops, so a standby
takes over on its next attempt. A transaction-level lock would be released before the work
runs; a lock inside a long open transaction would leave the connection idle in transaction.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from typing import Any

from sqlalchemy.engine import Engine

from shared.logs import describe_exception

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable 32-bit key for `name` (advisory locks take a bigint)."""
    return zlib.crc32(f"curavani-importer:{name}".encode())


class ImporterLock:
    """Try, verify and release the lock. The dedicated connection stays open while the process
    imports or stands by, so a standby's attempt is one cheap query, not a new connection."""

    def __init__(self, engine: Engine, name: str):
        self.engine = engine
        self.name = name
        self.key = lock_key(name)
        self.held = False
        self._connection: Any = None
        self._mutex = threading.Lock()

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it. True if this process holds it now."""
        with self._mutex:
            if self.held:
                return self._alive()
            try:
                with self._connect().cursor() as cursor:
                    cursor.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                    self.held = bool(cursor.fetchone()[0])
            except Exception as error:  # noqa: BLE001 — database down: simply not the leader now
                log.warning("importer lock: database unavailable (%s)", describe_exception(error))
                self._close()
                return False
            if self.held:
                log.info("importer lock %s acquired", self.name)
            return self.held

    def verify(self) -> bool:
        """Still held? False (and the connection dropped) if the dedicated connection has died."""
        with self._mutex:
            return self.held and self._alive()

    def release(self) -> None:
        with self._mutex:
            if self._connection is not None and self.held:
                try:
                    with self._connection.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                    log.info("importer lock %s released", self.name)
                except Exception as error:  # noqa: BLE001 — closing the session releases it anyway
                    log.warning("importer lock: unlock failed (%s)", describe_exception(error))
            self._close()

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed:
            pooled = self.engine.raw_connection()
            connection = pooled.dbapi_connection
            assert connection is not None  # a fresh checkout is connected
            pooled.detach()  # ours alone: never handed back to the pool
            connection.autocommit = True
            self._connection = connection
        return self._connection

    def _alive(self) -> bool:
        try:
            with self._connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except Exception as error:  # noqa: BLE001
            log.warning("importer lock %s lost: %s", self.name, describe_exception(error))
            self._close()
            return False

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # a connection already broken: nothing left to close
                self._connection.close()
        self._connection = None
        self.held = False
