"""Whether to import a listed file now, decided on its newest import record, which a claim marks
`processing` with one more attempt counted.

A file's version is a bucket object's generation, or a folder file's content hash. The version
imported already is not imported again (only finished at the source again); a failed one waits
for its `next_attempt_at`; a quarantined one waits for a new version or a retry. A new version
gets a record of its own.

A claim commits in a short transaction of its own — or in the transaction of the file imported
before it (`claim_next_here`), one transaction less per file: it is only bookkeeping, and a
crash after it is healed as after any claim (the next pass imports a `processing` file again).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text

from shared.db import unit_of_work
from shared.extensions import db
from shared.imports.models import (
    DONE,
    FAILED,
    PENDING,
    PROCESSING,
    QUARANTINED,
    ImportRecordMixin,
    empty_counts,
)
from shared.imports.types import Claim, Fetched, SourceFile
from shared.schemas import now_utc

_LOOK_UP: Any = object()  # `decide`: the file's newest record is to be looked up


@dataclass
class Claimed:
    """What a claim decided for one file, and the record it decided on (with `Claim.IMPORT`:
    marked processing)."""

    file: SourceFile
    claim: Claim
    record: ImportRecordMixin


class Claims:
    """The claims of one service's source. Holds the claim made ahead for the next file of a pass."""

    def __init__(self, *, source_kind: str, record_model: type[ImportRecordMixin],
                 label: Callable[[SourceFile], str]):
        self.source_kind = source_kind
        self.Record = record_model
        self.label = label
        self._next: tuple[SourceFile, Fetched | None] | None = None  # to claim with the import before it
        self._ahead: Claimed | None = None  # that claim, once committed

    def claim(self, file: SourceFile, fetched: Fetched | None, ahead: Claimed | None = None) -> Claimed:
        """The claim of `file`: `ahead` if it was claimed ahead, else one in a transaction of its own."""
        if ahead is not None and ahead.file == file:
            return ahead
        with unit_of_work():
            _flush_later()
            return self.decide(file, fetched)

    def claim_together(self, members: list[tuple[SourceFile, Fetched]], ahead: Claimed | None) -> list[Claimed]:
        """The claims of several files in one transaction, their records looked up in one query."""
        with unit_of_work():
            _flush_later()
            latest = self.newest_records([file.name for file, _ in members])
            return [ahead if ahead is not None and ahead.file == file
                    else self.decide(file, fetched, latest.get(file.name)) for file, fetched in members]

    # ---- the claim made ahead ------------------------------------------------------------------

    def expect(self, following: tuple[SourceFile, Fetched | None] | None) -> None:
        """The file after the one importing now, to be claimed in its transaction (None: no file)."""
        self._next = following

    def claim_next_here(self) -> Claimed | None:
        """In the transaction of an import that succeeded: the claim of the expected next file."""
        return self.decide(*self._next) if self._next is not None else None

    def hold_ahead(self, claimed: Claimed | None) -> None:
        """The claim made ahead, now committed with the import before it."""
        self._ahead = claimed

    def take_ahead(self) -> Claimed | None:
        """The claim made ahead, if any, handed over once."""
        claimed, self._ahead = self._ahead, None
        return claimed

    # ---- the decision --------------------------------------------------------------------------

    def decide(self, file: SourceFile, fetched: Fetched | None, latest: Any = _LOOK_UP) -> Claimed:
        """The claim in the current transaction; what it adds or changes is written when that
        commits. `latest`: the file's newest record, locked, if the caller looked it up already
        (None: it has none)."""
        now = now_utc()
        if latest is _LOOK_UP:
            latest = self.newest_records([file.name]).get(file.name)
        if latest is not None and _same_version(latest, file, fetched):
            if latest.status in DONE:
                return Claimed(file, Claim.FINISH_AGAIN, latest)
            if latest.status == QUARANTINED or (
                    latest.status == FAILED and (latest.next_attempt_at is None or latest.next_attempt_at > now)):
                return Claimed(file, Claim.SKIP, latest)
            record = latest  # pending (retry asked), failed and due, or processing (its runner died)
        else:
            if latest is not None and latest.status not in DONE:
                latest.next_attempt_at = None  # superseded: that version is gone from the source
            record = self._new_record(file, now)
        if fetched is not None:
            record.sha256, record.size = fetched.sha256, fetched.size
        record.status = PROCESSING
        record.attempts += 1
        record.started_at = now
        record.finished_at = None
        record.next_attempt_at = None
        return Claimed(file, Claim.IMPORT, record)

    def _new_record(self, file: SourceFile, now: datetime) -> ImportRecordMixin:
        record = self.Record(source=self.source_kind, name=file.name, label=self.label(file),
                             generation=file.generation, size=file.size, status=PENDING, attempts=0,
                             retry_round=0, created_at=now, counts=empty_counts(), errors=[], warnings=[])
        db.session.add(record)
        return record

    def newest_records(self, names: list[str]) -> dict[str, ImportRecordMixin]:
        """The newest record of each of these file names that has one, locked for this transaction."""
        Record = self.Record
        newest = (select(func.max(Record.id)).where(Record.source == self.source_kind, Record.name.in_(names))
                  .group_by(Record.name))
        return {record.name: record for record in db.session.scalars(
            select(Record).where(Record.id.in_(newest)).with_for_update())}

    def imported_already(self, read: list[tuple[SourceFile, Fetched]]) -> set[tuple[str, str | None]]:
        """Which of these folder files were imported already as they are now (name and content
        hash), in one query: the read-ahead does not prefetch them (their claim finishes them again)."""
        Record = self.Record
        with unit_of_work():
            return {(name, sha256) for name, sha256 in db.session.execute(select(Record.name, Record.sha256).where(
                Record.source == self.source_kind, Record.name.in_([file.name for file, _ in read]),
                Record.status.in_(DONE)))}


def _flush_later() -> None:
    """A claim's commit need not wait for its WAL to reach the disk: the import's own commit,
    synchronous, flushes it too, and a claim lost to a crash before any import committed is only
    claimed again. That is one disk flush less per file."""
    db.session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _same_version(record: ImportRecordMixin, file: SourceFile, fetched: Fetched | None) -> bool:
    """A bucket object's version is its generation; a folder file's, its content."""
    if file.generation is not None:
        return record.generation == file.generation
    return fetched is not None and record.sha256 == fetched.sha256
