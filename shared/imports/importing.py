"""One file through its three steps: claimed (shared/imports/claims.py), applied in one unit of
work with its record, finished at the source.

*Apply*: the handler calls the service functions, and the record's outcome (counts, errors,
warnings, status) commits with the data, or nothing does; a failure is recorded afterwards, in a
transaction of its own (shared/imports/records.py). *Finish*: the bucket deletes the object —
only after that commit. A crash between commit and finish is healed on the next pass: the record
says it is done, so the source is finished without importing again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Literal

from shared.db import unit_of_work
from shared.extensions import db
from shared.imports.claims import Claims
from shared.imports.handler import FileHandler
from shared.imports.models import DONE, FAILED, PROCESSING, ImportRecordMixin
from shared.imports.records import Records, is_transient
from shared.imports.types import (
    Claim,
    Fetched,
    FileVanished,
    InputError,
    Outcome,
    Source,
    SourceFile,
    SourceUnavailable,
    item_error,
)
from shared.logs import describe_exception, import_context
from shared.schemas import now_utc

log = logging.getLogger("shared.imports.runner")  # the import's lines name the runner, as they always did

# What became of one listed file: its record's new status, or the claim that did not import it.
FileStatus = str | Literal[Claim.SKIP, Claim.FINISH_AGAIN]


class FileImport:
    """The import of single files of one source, by one handler, into one service's records."""

    def __init__(self, *, service: str, source: Source, handler: FileHandler, claims: Claims, records: Records,
                 max_file_bytes: int, report: Callable[[ImportRecordMixin, float], None]):
        self.service = service
        self.source = source
        self.handler = handler
        self.claims = claims
        self.records = records
        self.max_file_bytes = max_file_bytes
        self.report = report
        self.retries: list[tuple[SourceFile, datetime]] = []  # transient failures and their retry times
        self._finishing: ThreadPoolExecutor | None = None

    def process(self, file: SourceFile, downloaded: Future[Fetched] | None = None) -> FileStatus:
        """Claim and import one file; its new status, or the claim when it was not imported.
        `downloaded`: the bucket object's download, or the folder file read ahead, started before
        its turn (its errors surface here)."""
        fetched = None
        ahead = self.claims.take_ahead()
        try:
            if file.generation is None:  # a folder file: its version is its content
                fetched = self._fetch(file, downloaded)
            claimed = self.claims.claim(file, fetched, ahead)
        except FileVanished:
            return Claim.SKIP
        except SourceUnavailable as error:
            log.warning("%s: cannot read %s (%s)", self.service, self.handler.label(file), error)
            return Claim.SKIP
        if claimed.claim is Claim.FINISH_AGAIN:
            self.finish_at_source(file)
        if claimed.claim is Claim.SKIP or claimed.claim is Claim.FINISH_AGAIN:
            return claimed.claim
        record = claimed.record
        with import_context(record.id):  # every line logged from here on carries the import id
            self.log_start(record)
            return self.import_claimed(file, record, fetched, downloaded)

    def log_start(self, record: ImportRecordMixin) -> None:
        log.info("%s: import #%s started (%s, attempt %s)", self.service, record.id, record.label, record.attempts)

    def import_claimed(self, file: SourceFile, record: ImportRecordMixin, fetched: Fetched | None,
                       downloaded: Future[Fetched] | None, *, failed: Outcome | None = None) -> str:
        """Apply a claimed file and record how it went. `failed`: the outcome of a file imported
        with others whose every item failed, so nothing of it was written: only its failure is
        recorded here."""
        started = now_utc()
        transient = False
        try:
            if failed is not None:
                status = self.records.fail(record.id, failed.errors, input_error=True, fetched=fetched, outcome=failed)
            else:
                self.handler.check_name(file)
                if fetched is None:
                    fetched = self._fetch(file, downloaded)
                status = self._apply(record.id, file, self._within_limit(fetched))
        except InputError as error:
            status = self.records.fail(record.id, error.as_errors(), input_error=True, fetched=fetched)
        except SourceUnavailable as error:
            transient = True
            status = self.records.fail(record.id, [item_error("source-error", str(error))], input_error=False,
                                       fetched=fetched, transient=True)
        except FileVanished as error:
            status = self.records.vanished(record.id, str(error))
        except Exception as error:  # noqa: BLE001 — the service must outlive any file
            db.session.rollback()
            transient = is_transient(error)
            # The class and place only: a database error's text can hold row values.
            log.error("%s: import #%s failed unexpectedly: %s", self.service, record.id, describe_exception(error))
            status = self.records.fail(record.id, [item_error(
                "internal-error", f"{describe_exception(error)}; the file is kept and will be retried")],
                input_error=False, fetched=fetched, transient=transient)
        return self.finished(file, record.id, status, (now_utc() - started).total_seconds(), transient=transient)

    def _fetch(self, file: SourceFile, downloaded: Future[Fetched] | None) -> Fetched:
        return downloaded.result() if downloaded else self.source.fetch(file, self.max_file_bytes)

    def _within_limit(self, fetched: Fetched) -> Fetched:
        if fetched.payload is None:
            raise InputError("too-large", f"the file has {fetched.size} bytes; at most "
                                          f"{self.max_file_bytes} are accepted (IMPORT_MAX_FILE_BYTES)")
        return fetched

    def _apply(self, record_id: int, file: SourceFile, fetched: Fetched) -> str:
        """The file's one unit of work: its record locked and still processing, the handler's
        writes, the outcome — and, when it imported, the claim of the next file of the pass."""
        with unit_of_work():
            record = self.records.locked(record_id)
            if record.status != PROCESSING:  # someone retried or finished it meanwhile
                return record.status
            assert fetched.payload is not None  # a file too large to read failed before
            outcome = self.handler.apply(fetched.payload, file, import_id=record.id)
            record.sha256, record.size = fetched.sha256, fetched.size  # one UPDATE with the outcome
            imported = outcome.status != FAILED
            if imported:
                self.records.done(record, outcome)
            ahead = self.claims.claim_next_here() if imported else None
        self.claims.hold_ahead(ahead)  # committed with this import
        if not imported:  # every item failed: nothing was written; a failure like any other
            return self.records.fail(record_id, outcome.errors, input_error=True, fetched=fetched, outcome=outcome)
        log.info("%s: import #%s %s: %s", self.service, record_id, outcome.status, counts_text(outcome.counts))
        return outcome.status

    def finished(self, file: SourceFile, record_id: int, status: str, seconds: float, *,
                 transient: bool = False) -> str:
        """After a file's import committed (or its failure did): a transient failure's retry time
        noted for the worker, the record reported, and a file done finished at the source."""
        finished = db.session.get_one(self.records.models.record, record_id)
        if transient and finished.status == FAILED and finished.next_attempt_at is not None:
            self.retries.append((file, finished.next_attempt_at))
        self.report(finished, seconds)
        if status in DONE:
            self.finish_at_source(file)
        return status

    # ---- finishing at the source -----------------------------------------------------------------

    @contextmanager
    def finishing_in_background(self, threads: int) -> Iterator[None]:
        """While a pass runs: files are finished at the source in `threads` background threads
        (none: right away), and the pass ends when they have been."""
        self._finishing = ThreadPoolExecutor(threads, thread_name_prefix="finish") if threads else None
        try:
            yield
        finally:
            if self._finishing is not None:
                self._finishing.shutdown(wait=True)
                self._finishing = None

    def finish_at_source(self, file: SourceFile) -> None:
        """After the commit: delete from a bucket, in the background while the next file imports
        when the source has `finish_concurrency` — a delete lost to a crash is done by the next
        pass, which finds the record done."""
        if self._finishing is not None:
            self._finishing.submit(self._finish_now, file)
        else:
            self._finish_now(file)

    def _finish_now(self, file: SourceFile) -> None:
        try:
            self.source.finish(file)
        except SourceUnavailable as error:
            log.warning("%s: %s imported but not yet finished at the source (%s); the next pass will",
                        self.service, self.handler.label(file), error)


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items() if value) or "nothing to do"
