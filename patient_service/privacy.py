"""Data protection for patient records (SPEC §10): erasure that reaches every copy, the export of
everything stored about a patient, the access log of reads, and retention of backups and log.

Nothing here commits but the jobs, each step of which is a unit of work of its own (a deleted file
cannot be rolled back, and a long transaction would hold its locks): the deletion of the backup
copies erasures owe (after an erasure's commit, and after every import pass) and retention
(`Housekeeping`, the importer's upkeep). The rest runs in the caller's unit of work: the erasure
route commits `erase_patient`, then calls `delete_erased_backups`.

What other modules write is read through them: import-record labels and backup copy names through
`patient_service.importer`, stored batch answers through `shared.batch`.
"""
from __future__ import annotations

import errno
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, insert, select, text, update

from patient_service import services
from patient_service.importer import backup_name, registration_label
from patient_service.models import (
    SCHEMA,
    AccessLogEntry,
    Alert,
    BackupDeletion,
    Consent,
    Erasure,
    IdempotencyKey,
    ImportRecord,
    Patient,
    PatientVersion,
    Registration,
)
from shared.batch.idempotency import Outcome, replace_answers
from shared.batch.runner import answers_naming
from shared.config import Settings
from shared.db import page_of, unit_of_work
from shared.errors import PROBLEM_MIMETYPE, NotFound, problem_body
from shared.events import record_erasure
from shared.extensions import db
from shared.imports import alerts
from shared.logs import describe_exception
from shared.schemas import now_utc

log = logging.getLogger(__name__)

SERVICE = "patient_service"
PRUNE_BATCH = 10_000

# ---- where patient data can be, and what an erasure does there ------------------------------------
# Every column of the `patient_service` schema whose type could hold a name, an address or a date
# is listed here; tests/data_protection/test_coverage.py fails for one that is not. "*": the
# patient's rows are deleted, so every column of them goes.
ERASED = "erased: the patient's rows are deleted"
SCRUBBED = "scrubbed: the patient's rows stay, this column is overwritten"
NOT_PERSONAL = "kept: holds no personal data"

COVERAGE: dict[str, dict[str, str]] = {
    "patients": {"*": ERASED},
    "patient_versions": {"*": ERASED},
    "consents": {"*": ERASED},
    "registrations": {"*": ERASED},
    # The object name is `{nachname}_{vorname}_{date}_{token}.json`; it becomes the label.
    # errors and warnings hold kinds, pointers, tokens, ids and messages that never echo a value.
    "imports": {"name": SCRUBBED, "source": NOT_PERSONAL, "label": NOT_PERSONAL, "sha256": NOT_PERSONAL,
                "status": NOT_PERSONAL, "counts": NOT_PERSONAL, "errors": NOT_PERSONAL,
                "warnings": NOT_PERSONAL},
    # The request itself is never stored, only a SHA-256 of it; the answer lists ids per item.
    "idempotency_keys": {"response_body": SCRUBBED, "response_headers": SCRUBBED, "actor": NOT_PERSONAL,
                         "key": NOT_PERSONAL, "request_hash": NOT_PERSONAL, "status": NOT_PERSONAL,
                         "path": NOT_PERSONAL},
    "alerts": {"key": NOT_PERSONAL, "subject": NOT_PERSONAL, "body": NOT_PERSONAL,  # §7.3: ids only
               "last_error": NOT_PERSONAL},
    "importer_state": {"lock_holder": NOT_PERSONAL},
    # Patient events are thin (§9.2): id, version and the names of the changed fields.
    "event_outbox": {"event_id": NOT_PERSONAL, "aggregate": NOT_PERSONAL, "record_id": NOT_PERSONAL,
                     "type": NOT_PERSONAL, "document": NOT_PERSONAL},
    "event_relay_state": {"holder": NOT_PERSONAL, "last_error": NOT_PERSONAL},
    # Ours: ids, actors, times, counts and `<token>-<generation>.json` file names.
    "erasures": {"actor": NOT_PERSONAL, "reason": NOT_PERSONAL, "rows_removed": NOT_PERSONAL},
    "backup_deletions": {"file_name": NOT_PERSONAL, "last_error": NOT_PERSONAL},
    "access_log": {"actor": NOT_PERSONAL, "what": NOT_PERSONAL},
}

# What an idempotent batch that named an erased patient answers from then on: its key stays
# claimed, so a retry of that batch replays this instead of writing the erased patient again.
ERASED_BATCH_ANSWER = Outcome(410, problem_body(
    410, "Erased", "the stored answer of this batch named a patient whose data were erased; it was removed",
    type="erased"), {"Content-Type": PROBLEM_MIMETYPE})


# ---- erasure (SPEC §10.1) --------------------------------------------------------------------------

def erase_patient(patient_id: int, *, reason: str, expected_versions: Collection[int] | None, actor: str,
                  backup_dir: str | None, now: datetime | None = None) -> Erasure:
    """The erasure's database part, in the caller's unit of work: every table of `COVERAGE`, the
    erasure record, the backup copies still to delete (`delete_erased_backups`, after the commit),
    and the `patient.erased` event."""
    now = now or now_utc()
    patient, tokens, records = _lock_patient(patient_id, expected_versions)
    rows = {
        "consents": _delete(Consent, Consent.patient_id == patient_id),
        "registrations": _delete(Registration, Registration.patient_id == patient_id),
        "patient_versions": _delete(PatientVersion, PatientVersion.record_id == patient_id),
        "imports": len(records),
        "idempotency_keys": replace_answers(IdempotencyKey, answers_naming(IdempotencyKey, patient_id),
                                            ERASED_BATCH_ANSWER),
    }
    for record in records:
        record.name = record.label
    version = patient.version
    db.session.expunge(patient)
    rows["patients"] = _delete(Patient, Patient.id == patient_id)

    token_of = {registration_label(token): token for token in tokens}
    files = sorted({backup_name(token_of[r.label], r.generation)
                    for r in records if r.generation is not None}) if backup_dir else []
    erasure = Erasure(patient_id=patient_id, erased_at=now, actor=actor, reason=reason, rows_removed=rows,
                      files_removed=0, files_pending=len(files))
    db.session.add(erasure)
    db.session.flush()
    if files:
        db.session.execute(insert(BackupDeletion), [
            {"erasure_id": erasure.id, "file_name": name, "attempts": 0, "created_at": now} for name in files])
    # The event's sequence follows the last version's, so consumers order it after every change.
    record_erasure(SERVICE, "patient", patient_id, version=version + 1, actor=actor, time=now)
    return erasure


def _lock_patient(patient_id: int, expected_versions: Collection[int] | None) -> tuple[Patient, list[str], list[Any]]:
    """The patient, its registration tokens and its import records, locked in the importer's order
    (import record, registration, patient), so an import of one of its files running at the same
    time waits or is waited for, never deadlocks; 404, 410 or 412 as for any write."""
    known_tokens = _tokens_of(patient_id)
    records = _import_records(known_tokens, lock=True)
    db.session.execute(select(Registration.id).where(Registration.patient_id == patient_id)
                       .order_by(Registration.id).with_for_update())
    patient = services.get_patient(patient_id, for_update=True, include_deleted=True)  # 404, 410 erased
    services.PATIENTS.check_version(patient, expected_versions)
    tokens = _tokens_of(patient_id)  # none can be added now: a registration's insert needs the patient
    if set(tokens) - set(known_tokens):
        records = _import_records(tokens, lock=True)
    return patient, tokens, records


def erasure_record(erasure_id: int) -> Erasure:
    """The erasure record as it is now (not as this session last saw it)."""
    return db.session.scalars(select(Erasure).where(Erasure.id == erasure_id)
                              .execution_options(populate_existing=True)).one()


def _tokens_of(patient_id: int) -> list[str]:
    return list(db.session.scalars(select(Registration.token).where(Registration.patient_id == patient_id)))


def _import_records(tokens: list[str], *, lock: bool) -> list[Any]:
    """The import records of the patient's files (every attempt, every generation), in id order."""
    if not tokens:
        return []
    query = (select(ImportRecord).where(ImportRecord.label.in_([registration_label(token) for token in tokens]))
             .order_by(ImportRecord.id))
    return list(db.session.scalars(query.with_for_update() if lock else query))


def _delete(model: type, condition: Any) -> int:
    return _rows(delete(model).where(condition))


def _rows(statement: Any) -> int:
    """Run a DELETE or UPDATE; how many rows it touched."""
    return cast("CursorResult[Any]", db.session.execute(statement)).rowcount


# ---- the erasure's backup copies: a job, each copy a unit of work of its own ------------------------

def delete_erased_backups(erasure_id: int, backup_dir: str | None) -> Erasure:
    """After the erasure's commit: delete its backup copies. A failure is logged, never raised: the
    copies left are tried again after the next import pass. The erasure record as it is now."""
    if backup_dir:
        try:
            delete_pending_backups(backup_dir, erasure_id=erasure_id)
        except Exception as error:  # noqa: BLE001 — committed: the rows left are done after the next pass
            db.session.rollback()
            log.error("erasure %s: deleting its backup copies failed: %s", erasure_id, describe_exception(error))
    return erasure_record(erasure_id)


def delete_pending_backups(backup_dir: str, *, erasure_id: int | None = None) -> int:
    """Delete the backup copies erasures still owe (those of one erasure, or all); each in a
    transaction of its own. A copy that cannot be deleted keeps its row and raises one alert per
    erasure; it is tried again on the next pass. Returns how many are still pending."""
    query = select(BackupDeletion.id).order_by(BackupDeletion.id)
    if erasure_id is not None:
        query = query.where(BackupDeletion.erasure_id == erasure_id)
    pending = 0
    for deletion_id in list(db.session.scalars(query)):
        db.session.rollback()
        with unit_of_work():
            deletion = db.session.scalars(
                select(BackupDeletion).where(BackupDeletion.id == deletion_id)
                .with_for_update(skip_locked=True).execution_options(populate_existing=True)).first()
            if deletion is None:  # done meanwhile, or being done by another process
                continue
            try:
                (Path(backup_dir) / deletion.file_name).unlink()
                removed = 1
            except FileNotFoundError:
                removed = 0  # already gone (retention, or by hand)
            except OSError as error:
                deletion.attempts += 1
                deletion.last_error = _safe_os_error(error)
                _alert_undeleted(erasure_record(deletion.erasure_id), deletion)
                log.warning("erasure %s: backup copy %s not deleted (%s); will retry", deletion.erasure_id,
                            deletion.file_name, deletion.last_error)
                pending += 1
                continue
            db.session.delete(deletion)
            db.session.execute(update(Erasure).where(Erasure.id == deletion.erasure_id).values(
                files_removed=Erasure.files_removed + removed, files_pending=Erasure.files_pending - 1))
    return pending


def _safe_os_error(error: OSError) -> str:
    code = errno.errorcode.get(error.errno or 0, "")
    return f"{describe_exception(error)}{f' ({code})' if code else ''}"


def _alert_undeleted(erasure: Erasure, deletion: BackupDeletion) -> None:
    subject = f"[{SERVICE}] erasure #{erasure.id}: backup copy not deleted"
    body = "\n".join([
        f"Service: {SERVICE}",
        f"Erasure: #{erasure.id} (patient id {erasure.patient_id}, erased {erasure.erased_at.isoformat(timespec='seconds')})",
        f"Backup copy: {deletion.file_name} in PATIENT_IMPORT_BACKUP_DIR",
        f"Error: {deletion.last_error}",
        "The database part of the erasure is done. The copy is tried again after every import pass",
        "until it is gone; fix what stops its deletion (see docs/security.md, Runbook: a request for erasure).",
    ]) + "\n"
    alerts.enqueue(Alert, f"erasure:{erasure.id}:backup-not-deleted", subject, body)


def erasure_of(patient_id: int) -> Erasure | None:
    return db.session.scalars(select(Erasure).where(Erasure.patient_id == patient_id)).first()


# ---- the access log (SPEC §10.3) -----------------------------------------------------------------

READ_KINDS = ("record", "as-of", "history", "consents", "registrations", "export", "list")
# bench/api_crud.py turns this off for its baseline (GET latency without the log); nothing else does.
RECORDING = True


# One round trip for any number of patients (a list logs each one it shows).
_LOG_READS = text(
    "SET LOCAL synchronous_commit = off; "
    f"INSERT INTO {SCHEMA}.{AccessLogEntry.__tablename__} (read_at, actor, patient_id, what) "
    "SELECT :read_at, :actor, unnest(CAST(:ids AS bigint[])), :what")


def record_access(actor: str, patient_ids: Collection[int], what: str, *, now: datetime | None = None) -> None:
    """Log reads of these patients in the caller's transaction. Its commit does not wait for the
    disk (`synchronous_commit = off`): a read costs one INSERT, and an entry can be lost only if
    PostgreSQL itself crashes within a fraction of a second (wal_writer_delay) of the read."""
    if not RECORDING or not patient_ids:
        return
    if what not in READ_KINDS:
        raise ValueError(f"unknown kind of read {what!r}")
    db.session.execute(_LOG_READS, {"read_at": now or now_utc(), "actor": actor, "ids": list(patient_ids),
                                    "what": what})


def read_patient(patient_id: int, *, actor: str) -> Patient:
    patient = services.get_patient(patient_id)
    record_access(actor, [patient_id], "record")
    return patient


def read_patient_as_of(patient_id: int, at: datetime, *, actor: str) -> dict[str, Any]:
    data = services.get_patient_as_of(patient_id, at)
    record_access(actor, [patient_id], "as-of")
    return data


def read_history(patient_id: int, *, actor: str) -> list[PatientVersion]:
    versions = services.patient_history(patient_id)
    record_access(actor, [patient_id], "history")
    return versions


def read_consents(patient_id: int, *, actor: str) -> list[Consent]:
    consents = services.patient_consents(patient_id)
    record_access(actor, [patient_id], "consents")
    return consents


def read_registrations(patient_id: int, *, actor: str) -> list[Registration]:
    registrations = services.patient_registrations(patient_id)
    record_access(actor, [patient_id], "registrations")
    return registrations


def read_list(filters: dict[str, Any], *, page: int, page_size: int, actor: str) -> tuple[list[Patient], int]:
    patients, total = services.list_patients(filters, page=page, page_size=page_size)
    record_access(actor, [p.id for p in patients], "list")
    return patients, total


def access_log(patient_id: int, *, page: int, page_size: int) -> tuple[list[AccessLogEntry], int]:
    """Reads of one patient, newest first; also after its erasure (the log has no personal data)."""
    exists = db.session.scalar(select(func.count()).select_from(Patient).where(Patient.id == patient_id))
    if not exists and erasure_of(patient_id) is None:
        raise NotFound(f"patient {patient_id} does not exist")
    query = select(AccessLogEntry).where(AccessLogEntry.patient_id == patient_id)
    return page_of(query, order_by=AccessLogEntry.id.desc(),
                   page=page, page_size=page_size)


# ---- access and portability (SPEC §10.2) ---------------------------------------------------------

def export(patient_id: int, *, actor: str, now: datetime | None = None) -> dict[str, Any]:
    """Everything stored about the patient, also a soft-deleted one (its data are still held)."""
    now = now or now_utc()
    patient = services.get_patient(patient_id, include_deleted=True)
    record_access(actor, [patient_id], "export", now=now)
    return {
        "exported_at": now,
        "patient": patient,
        "deleted_at": patient.deleted_at,
        "versions": services.patient_history(patient_id),
        "consents": services.patient_consents(patient_id),
        "registrations": services.patient_registrations(patient_id),
        "imports": _import_records(_tokens_of(patient_id), lock=False),
        "access_log": list(db.session.scalars(select(AccessLogEntry).where(
            AccessLogEntry.patient_id == patient_id).order_by(AccessLogEntry.read_at, AccessLogEntry.id))),
    }


# ---- storage limitation (SPEC §10.3, §10.4): jobs, each batch a unit of work of its own -----------

def prune_backups(backup_dir: str, days: int, *, now: datetime | None = None) -> int:
    """Delete backup copies (and crash-left temporaries) last written more than `days` ago."""
    folder = Path(backup_dir)
    if not folder.is_dir():
        return 0
    cutoff = ((now or now_utc()) - timedelta(days=days)).timestamp()
    removed = 0
    for path in folder.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
        except OSError as error:  # tried again tomorrow
            log.warning("backup retention: %s not deleted (%s)", path.name, _safe_os_error(error))
    return removed


def prune_access_log(days: int, *, now: datetime | None = None) -> int:
    """Delete access log entries older than `days`, a batch per transaction (no long lock)."""
    cutoff = (now or now_utc()) - timedelta(days=days)
    removed = 0
    while True:
        with unit_of_work():
            batch = select(AccessLogEntry.id).where(AccessLogEntry.read_at < cutoff).limit(PRUNE_BATCH)
            count = _rows(delete(AccessLogEntry).where(AccessLogEntry.id.in_(batch)))
        removed += count
        if count < PRUNE_BATCH:
            return removed


@dataclass
class Housekeeping:
    """Run by the importer after each of its passes (so only in the process that imports): backup
    copies erasures still owe, every pass; retention of backups and of the access log, daily."""

    backup_dir: str | None
    backup_retention_days: int | None
    access_log_retention_days: int
    retention_every: timedelta = timedelta(days=1)
    last_retention_at: datetime | None = None

    @classmethod
    def of(cls, settings: Settings) -> Housekeeping:
        return cls(settings.PATIENT_IMPORT_BACKUP_DIR, settings.PATIENT_IMPORT_BACKUP_RETENTION_DAYS,
                   settings.ACCESS_LOG_RETENTION_DAYS)

    def __call__(self, now: datetime | None = None) -> None:
        now = now or now_utc()
        if self.backup_dir:
            delete_pending_backups(self.backup_dir)
        if self.last_retention_at is not None and now - self.last_retention_at < self.retention_every:
            return
        self.last_retention_at = now
        backups = (prune_backups(self.backup_dir, self.backup_retention_days, now=now)
                   if self.backup_dir and self.backup_retention_days else 0)
        entries = prune_access_log(self.access_log_retention_days, now=now)
        if backups or entries:
            log.info("retention: %s backup copies and %s access log entries deleted", backups, entries)
