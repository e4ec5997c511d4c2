"""How an import attempt ends on its record: its outcome, or its failure — retried after a
back-off, quarantined after `max_attempts`, or, for a file that vanished, neither — and the
alerts it raises (on a partial import, the first failure and quarantine: once each, whatever the
number of workers and passes).

A transient failure (a lost database connection, an I/O error) is not the file's fault: it backs
off in seconds (2 s, 4 s, … up to 24 h) and never quarantines the file. A file's own failure
backs off from `retry_base` — or waits for a new version when input errors are not retried.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from shared.db import unit_of_work
from shared.errors import Conflict, NotFound
from shared.extensions import db
from shared.imports import alerts
from shared.imports.models import FAILED, PARTIAL, PENDING, QUARANTINED, ImportModels, ImportRecordMixin, empty_counts
from shared.imports.types import Fetched, Outcome, SourceUnavailable, item_error
from shared.schemas import now_utc

log = logging.getLogger("shared.imports.runner")  # the import's lines name the runner, as they always did

MAX_BACKOFF = timedelta(hours=24)
TRANSIENT_BACKOFF = timedelta(seconds=2)  # doubled per attempt, up to MAX_BACKOFF
MAX_DOUBLINGS = 20  # beyond it every back-off is MAX_BACKOFF anyway (and the product stays a timedelta)


def is_transient(error: BaseException) -> bool:
    """A lost database connection (or another operational database error) or an I/O error: not
    the file's fault, and likely gone in seconds."""
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError))
    return isinstance(error, (OSError, SourceUnavailable))


def backoff(base: timedelta, attempts: int) -> timedelta:
    """The wait before attempt `attempts + 1`: `base` doubled per attempt after the first, at most `MAX_BACKOFF`."""
    return min(base * 2 ** min(attempts - 1, MAX_DOUBLINGS), MAX_BACKOFF)


class Records:
    """The ends of one service's import attempts, written on their records."""

    def __init__(self, *, service: str, models: ImportModels, source_description: str, max_attempts: int,
                 retry_base: timedelta, retry_input_errors: bool):
        self.service = service
        self.models = models
        self.source_description = source_description
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_input_errors = retry_input_errors

    def locked(self, record_id: int) -> ImportRecordMixin:
        """The record, locked, as it is now (not as this session last saw it: someone may have
        retried or finished it meanwhile)."""
        Record = self.models.record
        return db.session.scalars(select(Record).where(Record.id == record_id)
                                  .with_for_update().execution_options(populate_existing=True)).one()

    def locked_all(self, record_ids: list[int]) -> dict[int, ImportRecordMixin]:
        """These records, locked, as they are now (as `locked`), by id."""
        Record = self.models.record
        return {record.id: record for record in db.session.scalars(
            select(Record).where(Record.id.in_(record_ids)).with_for_update().execution_options(populate_existing=True))}

    def done(self, record: ImportRecordMixin, outcome: Outcome) -> None:
        """In the import's transaction: the outcome of a file imported (succeeded or partial)."""
        record_outcome(record, outcome, outcome.status)
        if outcome.status == PARTIAL:
            self.alert(record)

    def fail(self, record_id: int, errors: list[dict[str, Any]], *, input_error: bool, fetched: Fetched | None,
             outcome: Outcome | None = None, transient: bool = False) -> str:
        """After a rollback, in a transaction of its own: the failure, its retry time or quarantine,
        and its alert. `outcome`: a file whose every item failed (it wrote nothing)."""
        db.session.rollback()
        with unit_of_work():
            record = self.locked(record_id)
            if fetched is not None:
                record.sha256, record.size = fetched.sha256, fetched.size
            record_outcome(record, outcome or Outcome(errors=errors), FAILED)
            if outcome is None:
                record.counts = empty_counts()
            self._schedule(record, input_error=input_error, transient=transient)
            if record.status == QUARANTINED or record.attempts == 1:
                self.alert(record)
            status = record.status
        kinds = ", ".join(sorted({e.get("kind", "error") for e in errors}))
        log.warning("%s: import #%s %s (attempt %s): %s", self.service, record_id, status, record.attempts, kinds)
        return status

    def _schedule(self, record: ImportRecordMixin, *, input_error: bool, transient: bool) -> None:
        """A failed record's next attempt: soon (transient), after a back-off, never (quarantined,
        or an input error that is not retried)."""
        assert record.finished_at is not None  # its outcome was just recorded
        retry = self.retry_input_errors or not input_error
        if transient:  # not the file's fault: quick retries, and never a quarantine for it
            record.next_attempt_at = record.finished_at + backoff(TRANSIENT_BACKOFF, record.attempts)
        elif retry and record.attempts >= self.max_attempts:
            record.status = QUARANTINED
        elif retry:
            record.next_attempt_at = record.finished_at + backoff(self.retry_base, record.attempts)

    def vanished(self, record_id: int, detail: str) -> str:
        """After a rollback: the file was deleted or replaced meanwhile; nobody's error, no alert."""
        db.session.rollback()
        with unit_of_work():
            record = self.locked(record_id)
            record_outcome(record, Outcome(errors=[item_error("vanished", detail)]), FAILED)
        log.info("%s: import #%s: %s", self.service, record_id, detail)
        return FAILED

    def alert(self, record: ImportRecordMixin) -> None:
        alerts.alert_import(self.models.alert, self.service, record, source_description=self.source_description)


def record_outcome(record: ImportRecordMixin, outcome: Outcome, status: str) -> None:
    record.status = status
    record.counts = dict(outcome.counts)
    record.errors = list(outcome.errors)
    record.warnings = list(outcome.warnings)
    record.finished_at = now_utc()
    record.next_attempt_at = None


def retry_record(record_model: type[ImportRecordMixin], record_id: int) -> ImportRecordMixin:
    """Clear a failed or quarantined import so the next pass tries it afresh (count starts again)."""
    record = db.session.scalars(select(record_model).where(record_model.id == record_id).with_for_update()).first()
    if record is None:
        raise NotFound(f"import {record_id} does not exist")
    if record.status not in (FAILED, QUARANTINED):
        raise Conflict(f"import {record_id} is {record.status}; only failed or quarantined imports can be retried")
    record.status = PENDING
    record.attempts = 0
    record.retry_round += 1
    record.next_attempt_at = now_utc()
    return record
