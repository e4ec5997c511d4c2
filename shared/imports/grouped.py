"""Several small files read ahead, imported together, if the handler `supports_groups`.

They are claimed in one transaction and applied in another, through the handler's `apply_group`:
one lookup and one write per table for all of them rather than for each (bench/therapist_import.py,
450 files of 100 therapists: 3.3x the raw baseline one at a time, 2.8x together). Each file keeps
its own record, outcome and attempt, and all of them commit together or none does — so each is
still all or nothing. When the handler cannot take them together (`apply_group` returns None), or
that fails, nothing of it stays, and they are imported one at a time like any file
(shared/imports/importing.py), which records each one's own error.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from shared.db import unit_of_work
from shared.imports.claims import Claims
from shared.imports.handler import FileHandler
from shared.imports.importing import FileImport, FileStatus, counts_text
from shared.imports.models import FAILED, PROCESSING, ImportRecordMixin
from shared.imports.readahead import Read
from shared.imports.types import Claim, Fetched, Outcome, SourceFile
from shared.logs import describe_exception, import_context
from shared.schemas import now_utc

log = logging.getLogger("shared.imports.runner")  # the import's lines name the runner, as they always did


@dataclass
class Member:
    """A file of a group, claimed for import: what was read of it and its record."""

    file: SourceFile
    fetched: Fetched
    record: ImportRecordMixin

    @property
    def payload(self) -> bytes:
        assert self.fetched.payload is not None  # a group is made of files read whole
        return self.fetched.payload


class _OneAtATime(Exception):
    """Files that were to be imported together are imported one at a time instead."""


class GroupImport:
    """The import of groups of files, falling back on `files` for those that cannot go together."""

    def __init__(self, *, service: str, handler: FileHandler, claims: Claims, files: FileImport,
                 still_leader: Callable[[], bool]):
        self.service = service
        self.handler = handler
        self.claims = claims
        self.files = files
        self.records = files.records
        self.still_leader = still_leader

    def import_group(self, read: list[Read]) -> list[FileStatus]:
        """Claim the files together, apply those to import together, and record each."""
        statuses: list[FileStatus] = []
        importing: list[Member] = []
        for claimed, (_, fetched) in zip(self.claims.claim_together(read, self.claims.take_ahead()), read, strict=True):
            if claimed.claim is Claim.IMPORT:
                importing.append(Member(claimed.file, fetched, claimed.record))
                continue
            if claimed.claim is Claim.FINISH_AGAIN:
                self.files.finish_at_source(claimed.file)
            statuses.append(claimed.claim)
        started = now_utc()
        outcomes = self.apply_together(importing) if len(importing) > 1 else None
        seconds = (now_utc() - started).total_seconds() / len(importing) if importing else 0.0
        for position, member in enumerate(importing):
            with import_context(member.record.id):
                if outcomes is None and not self.still_leader():
                    log.warning("importer lock lost; stopping this pass")
                    break
                statuses.append(self._record(member, None if outcomes is None else outcomes[position],
                                             len(importing), seconds))
        return statuses

    def _record(self, member: Member, outcome: Outcome | None, together: int, seconds: float) -> str:
        """One member after the group's transaction: imported alone (`outcome` None), failed (every
        item failed: nothing of it was written), or imported with the others."""
        if outcome is None:
            self.files.log_start(member.record)
            return self.files.import_claimed(member.file, member.record, member.fetched, None)
        if outcome.status == FAILED:
            return self.files.import_claimed(member.file, member.record, member.fetched, None, failed=outcome)
        log.info("%s: import #%s %s (with %s other files): %s", self.service, member.record.id, outcome.status,
                 together - 1, counts_text(outcome.counts))
        return self.files.finished(member.file, member.record.id, outcome.status, seconds)

    def apply_together(self, importing: list[Member]) -> list[Outcome] | None:
        """The group's one transaction: the records locked and still processing, the handler's
        outcomes, and the records of the files it imported (a file whose every item failed wrote
        nothing, and fails afterwards like any other). None when nothing of it was kept."""
        try:
            with unit_of_work():
                records = self.records.locked_all([member.record.id for member in importing])
                if any(records[member.record.id].status != PROCESSING for member in importing):
                    raise _OneAtATime  # someone retried or finished one of them meanwhile
                outcomes = self.handler.apply_group([(member.payload, member.file, member.record.id)
                                                     for member in importing])
                if outcomes is None:
                    raise _OneAtATime
                for member, outcome in zip(importing, outcomes, strict=True):
                    locked = records[member.record.id]
                    locked.sha256, locked.size = member.fetched.sha256, member.fetched.size
                    if outcome.status != FAILED:
                        self.records.done(locked, outcome)
        except _OneAtATime:
            return None
        except Exception as error:  # noqa: BLE001 — each file goes again on its own and records its error
            log.warning("%s: %s files imported together failed (%s); importing them one at a time",
                        self.service, len(importing), describe_exception(error))
            return None
        return outcomes
