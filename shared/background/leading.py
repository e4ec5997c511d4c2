"""Leading: which process of a service runs one of its background jobs (the importer, the event
relay), and the heartbeat that tells every process who it is.

A job's processes all call `Leadership.lead()` on their own clock. The one that holds the job's
advisory lock (`shared.imports.locking.ImporterLock`, SPEC §7.4) leads; the others stand by and
take over on their next call once PostgreSQL has let go of the lock (its holder died, or stopped
and released it). While it leads, `beat()` writes the holder (`host:pid`) and the time into the
job's state row, at most every `heartbeat_seconds`, for `/ready` and the dashboard.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime
from enum import Enum

from sqlalchemy.engine import Engine

from shared.db import unit_of_work
from shared.imports.locking import ImporterLock
from shared.schemas import now_utc

log = logging.getLogger(__name__)


class Lead(Enum):
    """What one call of `Leadership.lead()` found."""

    TAKEN = "taken"  # this process leads now and did not before: pick up what the last holder left
    KEPT = "kept"  # it led and still does
    LOST = "lost"  # it led and no longer does (its lock's connection died): stop the job's work
    STANDBY = "standby"  # it did not lead and still does not

    @property
    def leading(self) -> bool:
        return self is Lead.TAKEN or self is Lead.KEPT


# Writes the heartbeat into the job's state row, in the caller's transaction: (holder, time).
NoteHolder = Callable[[str, datetime], None]


class Leadership:
    """The lead of one job (`role`, as logs name it: "importer", "event relay") of one service."""

    def __init__(self, engine: Engine, lock_name: str, *, role: str, service: str,
                 heartbeat_seconds: float, note_holder: NoteHolder):
        self.lock = ImporterLock(engine, lock_name)
        self.role = role
        self.service = service
        self.heartbeat_seconds = heartbeat_seconds
        self.note_holder = note_holder
        self.noted_at: datetime | None = None  # when this process last wrote its heartbeat
        self._last_beat: float | None = None

    @property
    def identity(self) -> str:
        """`host:pid` of this process (asked each time: a forked worker is not its master)."""
        return f"{socket.gethostname()}:{os.getpid()}"

    @property
    def held(self) -> bool:
        return self.lock.held

    def lead(self) -> Lead:
        """Keep the lead (check the lock's connection is alive) or try to take it."""
        if self.lock.held:
            return Lead.KEPT if self.lock.verify() else Lead.LOST
        if not self.lock.try_acquire():
            return Lead.STANDBY
        log.info("%s is now the %s of %s", self.identity, self.role, self.service)
        self._last_beat = None  # the first heartbeat of a new holder is written at once
        return Lead.TAKEN

    def beat(self) -> None:
        """While leading: note holder and time in the state row (a unit of work of its own) when
        `heartbeat_seconds` have passed since the last note. Call inside an app context."""
        clock = time.monotonic()
        if not self.lock.held or (self._last_beat is not None and clock - self._last_beat < self.heartbeat_seconds):
            return
        now = now_utc()
        with unit_of_work():
            self.note_holder(self.identity, now)
        self._last_beat, self.noted_at = clock, now

    def release(self) -> None:
        """Let go of the lock at once, so a standby takes over on its next call."""
        self.lock.release()
