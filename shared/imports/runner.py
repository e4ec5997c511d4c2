"""One import pass: the files a source lists, in order, each claimed, applied and finished.

The pass loop is here; each of its jobs has a module of its own:
- shared/imports/readahead.py — which files are read before their turn, and which go in together;
- shared/imports/claims.py — whether to import a file now, decided on its record;
- shared/imports/importing.py — one file: claim, apply in one unit of work, finish at the source;
- shared/imports/grouped.py — small files read ahead, applied together, each all or nothing;
- shared/imports/records.py — an attempt's end: outcome, or failure with retry or quarantine;
- shared/imports/alerts.py — the alerts; the source outage is latched on the importer state by
  shared/background/outage.py, as the event relay's broker outage.
The handler a service supplies is described in shared/imports/handler.py.

A pass stops when this process no longer holds the importer lock (`still_leader`); a file that
failed for a transient reason is named with its retry time (`PassSummary.retries`), so the worker
tries it again then, not at the next poll.
"""
from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.background.outage import OutageLatch
from shared.db import unit_of_work
from shared.imports import alerts
from shared.imports.claims import Claims
from shared.imports.grouped import GroupImport
from shared.imports.handler import FileHandler
from shared.imports.importing import FileImport, FileStatus
from shared.imports.models import DONE, ImportModels, ImportRecordMixin, importer_state
from shared.imports.readahead import ReadAhead
from shared.imports.records import Records
from shared.imports.types import Claim, Fetched, InputError, Source, SourceFile, SourceUnavailable
from shared.schemas import now_utc

log = logging.getLogger(__name__)

# The gen-0 threshold of the garbage collector while a pass runs (Python's default is 700): an
# import allocates millions of short-lived objects that form no cycles, and a collection every 700
# of them, each walking the younger generations of a large heap, cost the 450-file import 0.48 s
# of its 11 s (gc.callbacks); with 10,000 it cost 0.01 s. The validation workers use it too.
GC_THRESHOLD = 10_000


@dataclass
class PassSummary:
    files: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    finished_again: int = 0
    skipped: int = 0
    source_error: str | None = None
    retries: list[tuple[SourceFile, datetime]] = field(default_factory=list)  # transient failures

    def add(self, status: FileStatus) -> None:
        if status is Claim.SKIP:
            self.skipped += 1
        elif status is Claim.FINISH_AGAIN:
            self.finished_again += 1
        else:
            self.files += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def __str__(self) -> str:
        if self.source_error:
            return f"source unavailable ({self.source_error})"
        parts = [f"{n} {status}" for status, n in sorted(self.by_status.items())]
        return (f"{self.files} file(s) imported" + (": " + ", ".join(parts) if parts else "")
                + f"; {self.skipped} skipped (done, waiting or quarantined)"
                + (f"; {self.finished_again} finished at the source again" if self.finished_again else ""))


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


class ImportRunner:
    def __init__(self, *, service: str, source: Source, handler: FileHandler, models: ImportModels,
                 max_file_bytes: int, max_attempts: int, retry_base_seconds: float,
                 retry_input_errors: bool, still_leader: Callable[[], bool] = lambda: True,
                 on_record_finished: Callable[[ImportRecordMixin, float], None] | None = None):
        self.service = service
        self.source = source
        self.handler = handler
        self.models = models
        self.max_file_bytes = max_file_bytes
        self.still_leader = still_leader
        self.on_record_finished = on_record_finished  # after a record's commit, before finishing at the source
        self.claims = Claims(source_kind=source.kind, record_model=models.record, label=handler.label)
        records = Records(service=service, models=models, source_description=source.description,
                          max_attempts=max_attempts, retry_base=timedelta(seconds=retry_base_seconds),
                          retry_input_errors=retry_input_errors)
        self.files = FileImport(service=service, source=source, handler=handler, claims=self.claims,
                                records=records, max_file_bytes=max_file_bytes, report=self._report)
        self.groups = GroupImport(service=service, handler=handler, claims=self.claims, files=self.files,
                                  still_leader=still_leader)
        self.outage = OutageLatch(models.alert, lambda: importer_state(models.state, for_update=True),
                                  "source_down_since", ("source:down", "source:up"), self._describe_outage)

    def run_pass(self, files: list[SourceFile] | None = None) -> PassSummary:
        """Import `files`, or everything the source lists. Call inside an app context."""
        with _fewer_collections:
            return self._run_pass(files)

    def process(self, file: SourceFile, downloaded: Future[Fetched] | None = None) -> FileStatus:
        """Import one file (shared/imports/importing.py)."""
        return self.files.process(file, downloaded)

    def _run_pass(self, files: list[SourceFile] | None) -> PassSummary:
        summary = PassSummary(retries=self.files.retries)
        self._touch_state(last_pass_started_at=now_utc())
        if files is None and (files := self._list(summary)) is None:
            return summary
        reads = ReadAhead(files, source=self.source, max_file_bytes=self.max_file_bytes, name_ok=self._name_ok,
                          prefetch=self.handler.prefetch if self.handler.supports_read_ahead else None,
                          groups=self.handler.supports_groups, imported_already=self.claims.imported_already)
        with self.files.finishing_in_background(self.source.finish_concurrency):
            try:
                self._walk(files, reads, summary)
            finally:
                self.handler.forget_prefetched()
                reads.close()
        finished = now_utc()
        imported = {"last_success_at": finished} if any(s in DONE for s in summary.by_status) else {}
        self._touch_state(last_pass_finished_at=finished, **imported)
        return summary

    def _walk(self, files: list[SourceFile], reads: ReadAhead, summary: PassSummary) -> None:
        """The files in order, while this process leads: each alone, or a few read ahead together."""
        position = 0
        while position < len(files):
            if not self.still_leader():
                log.warning("importer lock lost; stopping this pass")
                break
            current = reads.take(position)
            reads.start_after(position)
            group = reads.group_from(position, current)
            if group:
                self.claims.expect(None)  # a group's files claim no file ahead, not even one at a time
                statuses = self.groups.import_group(group)
                position += len(group)
            else:
                self.claims.expect(reads.next_to_claim(position))
                statuses = [self.files.process(files[position], downloaded=current)]
                position += 1
            for status in statuses:
                summary.add(status)

    def _name_ok(self, file: SourceFile) -> bool:
        try:
            self.handler.check_name(file)
        except InputError:
            return False  # never downloaded: it fails on its name when its turn comes
        return True

    def _report(self, record: ImportRecordMixin, seconds: float) -> None:
        if self.on_record_finished is not None:
            self.on_record_finished(record, seconds)

    # ---- source health and shared state --------------------------------------------------------

    def _list(self, summary: PassSummary) -> list[SourceFile] | None:
        """What the source lists; None, with the outage noted, when it cannot be listed."""
        try:
            files = self.source.list()
        except SourceUnavailable as error:
            summary.source_error = str(error)
            self.outage.down(str(error))
            log.warning("%s: import source unavailable: %s", self.service, error)
            return None
        if self.outage.up() is not None:
            log.info("%s: import source reachable again", self.service)
        return files

    def _describe_outage(self, down: bool, since: datetime, error_kind: str | None) -> tuple[str, str]:
        return alerts.source_alert(self.service, down=down, since=since, source_description=self.source.description,
                                   error_kind=error_kind)

    def _touch_state(self, **values: Any) -> None:
        with unit_of_work():
            state = importer_state(self.models.state, for_update=True)
            for key, value in values.items():
                setattr(state, key, value)
