"""One import pass: candidate files in, one file at a time, one transaction per file.

Per file:
1. *Claim* it in a short transaction of its own: find the latest record for this name; the same
   version (bucket generation, or folder content hash) already imported is not imported again;
   a failed one waits for `next_attempt_at`; a quarantined one waits for a new version or a
   retry. The claim marks the record `processing` and counts the attempt.
2. *Apply* it in one unit of work: the service's `FileHandler` calls the service functions, and
   the record's outcome (counts, errors, warnings, status) commits with the data, or nothing does.
3. *Finish* it at the source (the bucket deletes the object) only after that commit. A crash
   between commit and finish is healed on the next pass: the record says it is done, so the
   source is finished without importing again.

Small files of a local source that were read ahead go in together, up to `GROUP_FILES` at a
time, if the handler can (`apply_group`): claimed in one transaction, applied in one — each file
with its own record, outcome and attempt, committed together, so each is still all or nothing.
Whatever keeps them from going together sends them through the steps above one at a time.

Failures leave the file where it is, with specific errors on the record, a retry time with
exponential back-off, quarantine after `max_attempts`, and an alert on the first failure and on
quarantine — once, whatever the number of workers and passes. A transient failure (a lost
database connection, an I/O error) backs off in seconds instead (2 s, 4 s, … up to 24 h) and never
quarantines the file, which is not at fault; the pass names the file and its retry time
(`PassSummary.retries`) so the worker tries it again then, not at the next poll.
"""
from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from shared.db import unit_of_work
from shared.extensions import db
from shared.imports import alerts
from shared.imports.models import (
    DONE,
    FAILED,
    PARTIAL,
    PENDING,
    PROCESSING,
    QUARANTINED,
    SUCCEEDED,
    ImportModels,
    ImportRecordMixin,
    empty_counts,
    importer_state,
)
from shared.imports.types import (
    Claim,
    Fetched,
    FileHandler,
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

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=24)
TRANSIENT_BACKOFF = timedelta(seconds=2)  # doubled per attempt, up to MAX_BACKOFF
MAX_DOUBLINGS = 20  # beyond it every back-off is MAX_BACKOFF anyway (and the product stays a timedelta)


def is_transient(error: BaseException) -> bool:
    """A lost database connection (or another operational database error) or an I/O error: not
    the file's fault, and likely gone in seconds."""
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError))
    return isinstance(error, (OSError, SourceUnavailable))


@dataclass
class PassSummary:
    files: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    finished_again: int = 0
    skipped: int = 0
    source_error: str | None = None
    retries: list[tuple[SourceFile, datetime]] = field(default_factory=list)  # transient failures

    def add(self, status: str) -> None:
        self.files += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def __str__(self) -> str:
        if self.source_error:
            return f"source unavailable ({self.source_error})"
        parts = [f"{n} {status}" for status, n in sorted(self.by_status.items())]
        return (f"{self.files} file(s) imported" + (": " + ", ".join(parts) if parts else "")
                + f"; {self.skipped} skipped (done, waiting or quarantined)"
                + (f"; {self.finished_again} finished at the source again" if self.finished_again else ""))


# Files of a local source read ahead of the one importing and handed to the handler's `prefetch`
# (the therapist importer validates them in its worker processes meanwhile): always the next
# READ_AHEAD, and up to READ_AHEAD_FILES while what is read ahead stays within READ_AHEAD_BYTES, so
# that small files can be imported GROUP_FILES at a time while the next ones validate.
READ_AHEAD = 2
GROUP_FILES = 10
READ_AHEAD_FILES = 2 * GROUP_FILES
READ_AHEAD_BYTES = 8 * 1024 * 1024

# The gen-0 threshold of the garbage collector while a pass runs (Python's default is 700): an
# import allocates millions of short-lived objects that form no cycles, and a collection every 700
# of them, each walking the younger generations of a large heap, cost the 450-file import 0.48 s
# of its 11 s (gc.callbacks); with 10,000 it cost 0.01 s. The validation workers use it too.
GC_THRESHOLD = 10_000


class _FewerCollections:
    """`GC_THRESHOLD` while at least one pass of this process runs; the threshold before it after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passes = 0
        self._before = gc.get_threshold()

    def __enter__(self) -> None:
        with self._lock:
            if self._passes == 0:
                self._before = gc.get_threshold()
                gc.set_threshold(max(GC_THRESHOLD, self._before[0]), *self._before[1:])
            self._passes += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._passes -= 1
            if self._passes == 0:
                gc.set_threshold(*self._before)


_fewer_collections = _FewerCollections()
_LOOK_UP: Any = object()  # `_decide`: the file's newest record is to be looked up


class ImportRunner:
    def __init__(self, *, service: str, source: Source, handler: FileHandler, models: ImportModels,
                 max_file_bytes: int, max_attempts: int, retry_base_seconds: float,
                 retry_input_errors: bool, still_leader: Callable[[], bool] = lambda: True,
                 on_record_finished: Callable[[Any, float], None] | None = None):
        self.service = service
        self.source = source
        self.handler = handler
        self.models = models
        self.max_file_bytes = max_file_bytes
        self.max_attempts = max_attempts
        self.retry_base = timedelta(seconds=retry_base_seconds)
        self.retry_input_errors = retry_input_errors
        self.still_leader = still_leader
        self.on_record_finished = on_record_finished
        self._finishing: ThreadPoolExecutor | None = None
        self.retries: list[tuple[SourceFile, datetime]] = []
        # The next file of the pass (and what was read of it ahead, if anything), which a successful
        # import claims in its own transaction; and that claim, once committed.
        self._next: tuple[SourceFile, Fetched | None] | None = None
        self._claimed_ahead: tuple[SourceFile, Claim, Any] | None = None

    # ---- a pass ------------------------------------------------------------------------------

    def run_pass(self, files: list[SourceFile] | None = None) -> PassSummary:
        """Import `files`, or everything the source lists. Call inside an app context."""
        with _fewer_collections:
            return self._run_pass(files)

    def _run_pass(self, files: list[SourceFile] | None) -> PassSummary:  # noqa: C901 — issue 24: the runner split by job
        summary = PassSummary(retries=self.retries)
        self._touch_state(last_pass_started_at=now_utc())
        if files is None:
            try:
                files = self.source.list()
            except SourceUnavailable as error:
                summary.source_error = str(error)
                self._source_down(str(error))
                return summary
            self._source_up()
        remote = self.source.finish_concurrency
        self._finishing = ThreadPoolExecutor(remote, thread_name_prefix="finish") if remote else None
        downloads = ThreadPoolExecutor(1, thread_name_prefix="download") if remote else None
        prefetch = getattr(self.handler, "prefetch", None) if not remote else None
        grouping = prefetch is not None and hasattr(self.handler, "apply_group")
        try:
            reading: dict[int, Future] = {}  # read-aheads by position in `files`
            position = 0
            while position < len(files):
                if not self.still_leader():
                    log.warning("importer lock lost; stopping this pass")
                    break
                # A remote source: the next object downloads while this one imports. A local one
                # with a handler that can `prefetch`: the next files are read and handed to it
                # (which validates them in worker processes) before this one imports. Imports and
                # their transactions still happen in order; small files read ahead may go in
                # together (`_import_group`), each still all or nothing.
                current, self._next = reading.pop(position, None), None
                self._read_ahead_from(files, position, reading, downloads, prefetch)
                group = self._group(files, position, current, reading) if grouping else []
                if group:
                    statuses = self._import_group(group)
                    position += len(group)
                else:
                    if position + 1 in reading:  # the next file, if its name is one to import
                        following, read = files[position + 1], _read_already(reading[position + 1])
                        if following.generation is not None or read is not None:  # a folder file's version is its content
                            self._next = (following, read)
                    statuses = [self.process(files[position], downloaded=current)]
                    position += 1
                for status in statuses:
                    if status is Claim.SKIP:
                        summary.skipped += 1
                    elif status is Claim.FINISH_AGAIN:
                        summary.finished_again += 1
                    else:
                        summary.add(status)
        finally:
            forget = getattr(self.handler, "forget_prefetched", None)
            if forget is not None:
                forget()
            if downloads is not None:
                downloads.shutdown(wait=True, cancel_futures=True)
            if self._finishing is not None:
                self._finishing.shutdown(wait=True)  # the pass ends when its deletes have been done
                self._finishing = None
        finished = now_utc()
        imported = {"last_success_at": finished} if any(s in DONE for s in summary.by_status) else {}
        self._touch_state(last_pass_finished_at=finished, **imported)
        return summary

    def _read_ahead_from(self, files: list[SourceFile], position: int, reading: dict[int, Future],
                         downloads: ThreadPoolExecutor | None, prefetch: Callable[[bytes], None] | None) -> None:
        """Start reading the files after `position`: one bucket object ahead; for a local source,
        `READ_AHEAD` files, and more (up to `READ_AHEAD_FILES`) while their sizes as listed add up
        to at most `READ_AHEAD_BYTES`. A file whose name is not one to import is not read."""
        depth = 1 if downloads is not None else READ_AHEAD_FILES if prefetch is not None else 0
        held = sum(files[p].size or 0 for p in reading)
        read: list[tuple[SourceFile, Fetched]] = []
        for later in range(position + 1, min(position + 1 + depth, len(files))):
            if later in reading or not self._name_ok(files[later]):
                continue
            if downloads is not None:
                reading[later] = downloads.submit(self.source.fetch, files[later], self.max_file_bytes)
            elif prefetch is not None:
                size = files[later].size
                if later > position + READ_AHEAD and (size is None or held + size > READ_AHEAD_BYTES):
                    break
                held += size or 0
                reading[later] = self._read_ahead(files[later])
                if (fetched := _read_already(reading[later])) is not None and fetched.payload is not None:
                    read.append((files[later], fetched))
        if read and prefetch is not None:
            imported = self._imported_already(read)
            for file, fetched in read:
                if (file.name, fetched.sha256) not in imported:
                    prefetch(fetched.payload)  # type: ignore[arg-type]  # read: not None

    def _imported_already(self, read: list[tuple[SourceFile, Fetched]]) -> set[tuple[str, str | None]]:
        """Which of these folder files were imported already as they are now (name and content
        hash): a rescan finds every file again, and validating the unchanged ones ahead would be
        work for nothing (their claim finishes them again). One query for all of them."""
        Record = self.models.record
        with unit_of_work():
            return {(name, sha256) for name, sha256 in db.session.execute(select(Record.name, Record.sha256).where(
                Record.source == self.source.kind, Record.name.in_([file.name for file, _ in read]),
                Record.status.in_(DONE)))}

    @staticmethod
    def _group(files: list[SourceFile], position: int, current: Future | None,
               reading: dict[int, Future]) -> list[tuple[SourceFile, Fetched]]:
        """The files from `position` on that were read ahead (up to `GROUP_FILES`), taken out of
        `reading`, if there are at least two of them; else none."""
        members: list[tuple[SourceFile, Fetched]] = []
        for later in range(position, min(position + GROUP_FILES, len(files))):
            fetched = _read_already(current if later == position else reading.get(later))
            if fetched is None or fetched.payload is None:
                break
            members.append((files[later], fetched))
        if len(members) < 2:
            return []
        for later in range(position + 1, position + len(members)):
            del reading[later]
        return members

    # ---- several small files at once -----------------------------------------------------------

    def _import_group(self, members: list[tuple[SourceFile, Fetched]]) -> list[str | Literal[Claim.SKIP, Claim.FINISH_AGAIN]]:
        """Files read ahead, claimed in one transaction and imported in another, through the
        handler's `apply_group`: one lookup and one write per table for all of them rather than
        for each (bench/therapist_import.py, 450 files of 100 therapists: 3.3x the raw baseline one
        at a time, 2.8x together).
        Each file keeps its own record, outcome and attempt, and all of them commit together or
        none does — so each is still all or nothing. When the handler cannot take them together
        (`apply_group` returns None), or that fails, nothing of it stays, and they are imported
        one at a time like any file, which records each one's own error."""
        claimed_ahead, self._claimed_ahead = self._claimed_ahead, None
        with unit_of_work():
            db.session.execute(text("SET LOCAL synchronous_commit TO OFF"))  # as in `_claim`
            latest = self._newest_records([file.name for file, _ in members])  # one query for all of them
            claims = [(file, fetched, *(claimed_ahead[1:] if claimed_ahead and claimed_ahead[0] == file
                                        else self._decide(file, fetched, latest.get(file.name))))
                      for file, fetched in members]
        statuses: list[str | Literal[Claim.SKIP, Claim.FINISH_AGAIN]] = []
        importing = []
        for file, fetched, claim, record in claims:
            if claim is Claim.IMPORT:
                importing.append((file, fetched, record))
                continue
            if claim is Claim.FINISH_AGAIN:
                self._finish_at_source(file)
            statuses.append(claim)
        started = now_utc()
        outcomes = self._apply_group(importing) if len(importing) > 1 else None
        seconds = (now_utc() - started).total_seconds() / len(importing) if importing else 0.0
        for position, (file, fetched, record) in enumerate(importing):
            with import_context(record.id):
                if outcomes is None:  # one at a time, as any file
                    if not self.still_leader():
                        log.warning("importer lock lost; stopping this pass")
                        break
                    log.info("%s: import #%s started (%s, attempt %s)", self.service, record.id, record.label,
                             record.attempts)
                    statuses.append(self._import(file, record, fetched, None))
                elif outcomes[position].status == FAILED:  # every item failed: nothing of it was written
                    statuses.append(self._import(file, record, fetched, None, failed=outcomes[position]))
                else:
                    outcome = outcomes[position]
                    log.info("%s: import #%s %s (with %s other files): %s", self.service, record.id, outcome.status,
                             len(importing) - 1, _counts_text(outcome.counts))
                    statuses.append(self._finished(file, record.id, outcome.status, seconds))
        return statuses

    def _apply_group(self, importing: list[tuple[SourceFile, Fetched, Any]]) -> list[Outcome] | None:
        """`_import_group`'s one transaction: the records locked and still processing, the handler's
        outcomes, and the records of the files it imported (a file whose every item failed wrote
        nothing, and fails afterwards like any other). None when nothing of it was kept."""
        Record = self.models.record
        try:
            with unit_of_work():
                records = {record.id: record for record in db.session.scalars(
                    select(Record).where(Record.id.in_([record.id for _, _, record in importing]))
                    .with_for_update().execution_options(populate_existing=True))}  # as in `_locked_record`
                if any(records[record.id].status != PROCESSING for _, _, record in importing):
                    raise _OneAtATime  # someone retried or finished one of them meanwhile
                outcomes = self.handler.apply_group(  # type: ignore[attr-defined]
                    [(fetched.payload, file, record.id) for file, fetched, record in importing])
                if outcomes is None:
                    raise _OneAtATime
                for (_, fetched, record), outcome in zip(importing, outcomes, strict=True):
                    locked = records[record.id]
                    locked.sha256, locked.size = fetched.sha256, fetched.size
                    if outcome.status != FAILED:
                        self._record_outcome(locked, outcome, outcome.status)
                        if outcome.status == PARTIAL:
                            self._alert(locked)
        except _OneAtATime:
            return None
        except Exception as error:  # noqa: BLE001 — each file goes again on its own and records its error
            log.warning("%s: %s files imported together failed (%s); importing them one at a time",
                        self.service, len(importing), describe_exception(error))
            return None
        return outcomes

    # ---- one file ----------------------------------------------------------------------------

    def process(self, file: SourceFile,
                downloaded: Future | None = None) -> str | Literal[Claim.SKIP, Claim.FINISH_AGAIN]:
        """Import one file; returns its new status, or the claim when it was not imported
        (`Claim.SKIP`, `Claim.FINISH_AGAIN`). `downloaded`: the bucket object's download, or the
        folder file read ahead, started before its turn (its errors surface here)."""
        fetched = None
        claimed, self._claimed_ahead = self._claimed_ahead, None
        try:
            if file.generation is None:  # a folder file: its version is its content
                fetched = downloaded.result() if downloaded else self.source.fetch(file, self.max_file_bytes)
            if claimed is not None and claimed[0] == file:
                claim, record = claimed[1], claimed[2]  # claimed with the file before it
            else:
                claim, record = self._claim(file, fetched)
        except FileVanished:
            return Claim.SKIP
        except SourceUnavailable as error:
            log.warning("%s: cannot read %s (%s)", self.service, self.handler.label(file), error)
            return Claim.SKIP
        if claim is Claim.FINISH_AGAIN:
            self._finish_at_source(file)
        if claim is Claim.SKIP or claim is Claim.FINISH_AGAIN:
            return claim
        with import_context(record.id):  # every line logged from here on carries the import id
            log.info("%s: import #%s started (%s, attempt %s)", self.service, record.id, record.label,
                     record.attempts)
            return self._import(file, record, fetched, downloaded)

    def _import(self, file: SourceFile, record: Any, fetched: Fetched | None, downloaded: Future | None, *,
                failed: Outcome | None = None) -> str:
        """Apply the file and record how it went. `failed`: the outcome of a file imported with
        others (`_import_group`) whose every item failed, so nothing of it was written: only its
        failure is recorded here."""
        started = now_utc()
        transient = False
        try:
            if failed is not None:
                status = self._fail(record.id, failed.errors, input_error=True, fetched=fetched, outcome=failed)
            else:
                self.handler.check_name(file)
                if fetched is None:
                    fetched = downloaded.result() if downloaded else self.source.fetch(file, self.max_file_bytes)
                if fetched.payload is None:
                    raise InputError("too-large", f"the file has {fetched.size} bytes; at most "
                                                  f"{self.max_file_bytes} are accepted (IMPORT_MAX_FILE_BYTES)")
                status = self._apply(record.id, file, fetched)
        except InputError as error:
            status = self._fail(record.id, error.as_errors(), input_error=True, fetched=fetched)
        except SourceUnavailable as error:
            transient = True
            status = self._fail(record.id, [item_error("source-error", str(error))], input_error=False,
                                fetched=fetched, transient=True)
        except FileVanished as error:
            status = self._vanished(record.id, str(error))
        except Exception as error:  # noqa: BLE001 — the service must outlive any file
            db.session.rollback()
            transient = is_transient(error)
            # The class and place only: a database error's text can hold row values.
            log.error("%s: import #%s failed unexpectedly: %s", self.service, record.id,
                      describe_exception(error))
            status = self._fail(record.id, [item_error(
                "internal-error", f"{describe_exception(error)}; the file is kept and will be retried")],
                input_error=False, fetched=fetched, transient=transient)
        return self._finished(file, record.id, status, (now_utc() - started).total_seconds(), transient=transient)

    def _finished(self, file: SourceFile, record_id: int, status: str, seconds: float, *,
                  transient: bool = False) -> str:
        """After a file's import committed (or its failure did): a transient failure's retry time
        noted for the worker, the record reported, and a file done finished at the source."""
        finished = db.session.get_one(self.models.record, record_id)
        if transient and finished.status == FAILED and finished.next_attempt_at is not None:
            self.retries.append((file, finished.next_attempt_at))
        if self.on_record_finished:
            self.on_record_finished(finished, seconds)
        if status in DONE:
            self._finish_at_source(file)
        return status

    def _read_ahead(self, file: SourceFile) -> Future:
        """Read a folder file that is next in line; the future holds what was read, or the error
        reading it (raised when its turn comes)."""
        ahead: Future = Future()
        try:
            ahead.set_result(self.source.fetch(file, self.max_file_bytes))
        except Exception as error:  # noqa: BLE001 — the file's own turn raises it
            ahead.set_exception(error)
        return ahead

    def _name_ok(self, file: SourceFile) -> bool:
        try:
            self.handler.check_name(file)
        except InputError:
            return False  # never downloaded: it fails on its name when its turn comes
        return True

    def _claim(self, file: SourceFile, fetched: Fetched | None) -> tuple[Claim, Any]:
        """The decision for this file, and with `Claim.IMPORT` its record, marked processing."""
        with unit_of_work():
            # The claim's commit need not wait for its WAL to reach the disk: the import's own
            # commit, synchronous, flushes it too, and a claim lost to a crash before any import
            # committed is only claimed again. That is one disk flush less per file.
            db.session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            return self._decide(file, fetched)

    def _newest_records(self, names: list[str]) -> dict[str, Any]:
        """The newest record of each of these file names that has one, locked for this transaction."""
        Record = self.models.record
        newest = (select(func.max(Record.id)).where(Record.source == self.source.kind, Record.name.in_(names))
                  .group_by(Record.name))
        return {record.name: record for record in db.session.scalars(
            select(Record).where(Record.id.in_(newest)).with_for_update())}

    def _decide(self, file: SourceFile, fetched: Fetched | None, latest: Any = _LOOK_UP) -> tuple[Claim, Any]:
        """`_claim` in the current transaction: the import of the file before it claims the next
        file of the pass with its own commit (one transaction less per file). That claim is only
        bookkeeping — a record marked processing, an attempt counted — and a crash after it is
        healed as after any claim: the next pass imports a `processing` file again. `latest`: the
        file's newest record, locked, if the caller looked it up already (None: it has none).
        What it adds or changes is written when the transaction commits."""
        Record = self.models.record
        now = now_utc()
        if latest is _LOOK_UP:
            latest = self._newest_records([file.name]).get(file.name)
        record: ImportRecordMixin
        if latest is not None and _same_version(latest, file, fetched):
            if latest.status in DONE:
                return Claim.FINISH_AGAIN, latest
            if latest.status == QUARANTINED:
                return Claim.SKIP, latest
            if latest.status == FAILED and (latest.next_attempt_at is None or latest.next_attempt_at > now):
                return Claim.SKIP, latest
            record = latest  # pending (retry asked), failed and due, or processing (its runner died)
        else:
            if latest is not None and latest.status not in DONE:
                latest.next_attempt_at = None  # superseded: that version is gone from the source
            record = Record(source=self.source.kind, name=file.name, label=self.handler.label(file),
                            generation=file.generation, size=file.size, status=PENDING, attempts=0,
                            retry_round=0, created_at=now, counts=empty_counts(), errors=[], warnings=[])
            db.session.add(record)
        if fetched is not None:
            record.sha256, record.size = fetched.sha256, fetched.size
        record.status = PROCESSING
        record.attempts += 1
        record.started_at = now
        record.finished_at = None
        record.next_attempt_at = None
        return Claim.IMPORT, record

    def _locked_record(self, record_id: int) -> Any:
        """The record, locked, as it is now (not as this session last saw it: someone may have
        retried or finished it meanwhile)."""
        return db.session.scalars(select(self.models.record).where(self.models.record.id == record_id)
                                  .with_for_update().execution_options(populate_existing=True)).one()

    def _apply(self, record_id: int, file: SourceFile, fetched: Fetched) -> str:
        with unit_of_work():
            record = self._locked_record(record_id)
            if record.status != PROCESSING:  # someone retried or finished it meanwhile
                return record.status
            assert fetched.payload is not None  # a file too large to read failed before
            outcome = self.handler.apply(fetched.payload, file, import_id=record.id)
            record.sha256, record.size = fetched.sha256, fetched.size  # one UPDATE with the outcome
            claimed_ahead = None
            if outcome.status == PARTIAL or outcome.status == SUCCEEDED:
                self._record_outcome(record, outcome, outcome.status)
                if outcome.status == PARTIAL:
                    self._alert(record)
                status = outcome.status
                if self._next is not None:
                    claimed_ahead = (self._next[0], *self._decide(*self._next))
            else:
                status = None
        self._claimed_ahead = claimed_ahead  # committed with this import
        if status is None:  # every item failed: nothing was written; a failure like any other
            return self._fail(record_id, outcome.errors, input_error=True, fetched=fetched, outcome=outcome)
        log.info("%s: import #%s %s: %s", self.service, record_id, status, _counts_text(outcome.counts))
        return status

    def _record_outcome(self, record: Any, outcome: Outcome, status: str) -> None:
        record.status = status
        record.counts = dict(outcome.counts)
        record.errors = list(outcome.errors)
        record.warnings = list(outcome.warnings)
        record.finished_at = now_utc()
        record.next_attempt_at = None

    def _fail(self, record_id: int, errors: list[dict[str, Any]], *, input_error: bool,
              fetched: Fetched | None, outcome: Outcome | None = None, transient: bool = False) -> str:
        db.session.rollback()
        with unit_of_work():
            record = self._locked_record(record_id)
            if fetched is not None:
                record.sha256, record.size = fetched.sha256, fetched.size
            self._record_outcome(record, outcome or Outcome(errors=errors), FAILED)
            if outcome is None:
                record.counts = empty_counts()
            retry = self.retry_input_errors or not input_error
            doublings = min(record.attempts - 1, MAX_DOUBLINGS)
            if transient:  # not the file's fault: quick retries, and never a quarantine for it
                record.next_attempt_at = record.finished_at + min(TRANSIENT_BACKOFF * 2 ** doublings, MAX_BACKOFF)
            elif retry and record.attempts >= self.max_attempts:
                record.status = QUARANTINED
            elif retry:
                record.next_attempt_at = record.finished_at + min(self.retry_base * 2 ** doublings, MAX_BACKOFF)
            if record.status == QUARANTINED or record.attempts == 1:
                self._alert(record)
            status = record.status
        kinds = ", ".join(sorted({e.get("kind", "error") for e in errors}))
        log.warning("%s: import #%s %s (attempt %s): %s", self.service, record_id, status, record.attempts, kinds)
        return status

    def _vanished(self, record_id: int, detail: str) -> str:
        db.session.rollback()
        with unit_of_work():
            record = self._locked_record(record_id)
            self._record_outcome(record, Outcome(errors=[item_error("vanished", detail)]), FAILED)
        log.info("%s: import #%s: %s", self.service, record_id, detail)
        return FAILED

    def _alert(self, record: Any) -> None:
        subject, body = alerts.import_alert(self.service, record, source_description=self.source.description)
        alerts.enqueue(self.models.alert, f"import:{record.id}:{record.retry_round}:{record.status}", subject, body)

    def _finish_at_source(self, file: SourceFile) -> None:
        """After the commit: delete from a bucket. A source with `finish_concurrency` has this
        done in the background while the next file imports — files still import one at a time,
        and a delete lost to a crash is done by the next pass, which finds the record done."""
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

    # ---- source health and shared state --------------------------------------------------------

    def _state(self) -> Any:
        return importer_state(self.models.state, for_update=True)

    def _set_state(self, **values: Any) -> Any:
        state = self._state()
        for key, value in values.items():
            setattr(state, key, value)
        return state

    def _touch_state(self, **values: Any) -> None:
        with unit_of_work():
            self._set_state(**values)

    def _source_down(self, error_kind: str) -> None:
        with unit_of_work():
            state = self._state()
            if state.source_down_since is None:
                state.source_down_since = now_utc()
                subject, body = alerts.source_alert(self.service, down=True, since=state.source_down_since,
                                                    source_description=self.source.description,
                                                    error_kind=error_kind)
                alerts.enqueue(self.models.alert, f"source:down:{state.source_down_since.isoformat()}",
                               subject, body)
        log.warning("%s: import source unavailable: %s", self.service, error_kind)

    def _source_up(self) -> None:
        with unit_of_work():
            state = self._state()
            if state.source_down_since is not None:
                subject, body = alerts.source_alert(self.service, down=False, since=state.source_down_since,
                                                    source_description=self.source.description)
                alerts.enqueue(self.models.alert, f"source:up:{state.source_down_since.isoformat()}",
                               subject, body)
                state.source_down_since = None
                log.info("%s: import source reachable again", self.service)


class _OneAtATime(Exception):
    """Files that were to be imported together are imported one at a time instead."""


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items() if value) or "nothing to do"


def _read_already(ahead: Future | None) -> Fetched | None:
    """What a read-ahead of the next file got, if it is done and got something; else None (a bucket
    object's version is its generation, known without reading it)."""
    if ahead is None or not ahead.done() or ahead.exception() is not None:
        return None
    return ahead.result()


def _same_version(record: ImportRecordMixin, file: SourceFile, fetched: Fetched | None) -> bool:
    """A bucket object's version is its generation; a folder file's, its content."""
    if file.generation is not None:
        return record.generation == file.generation
    return fetched is not None and record.sha256 == fetched.sha256


def retry_record(record_model: type[ImportRecordMixin], record_id: int) -> Any:
    """Clear a failed or quarantined import so the next pass tries it afresh (count starts again)."""
    from shared.errors import Conflict, NotFound

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
