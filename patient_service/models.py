"""Patient service tables, all in the PostgreSQL schema `patient_service`."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Date, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.batch import IdempotencyKeyMixin
from shared.events import register_event_tables
from shared.events.outbox import OutboxEventMixin, RelayStateMixin
from shared.extensions import Model
from shared.imports.models import AlertMixin, ImporterStateMixin, ImportModels, ImportRecordMixin
from shared.versioning import VersionedRecordMixin, VersionRowMixin

SCHEMA = "patient_service"


class Patient(VersionedRecordMixin, Model):
    __tablename__ = "patients"

    anrede: Mapped[str | None] = mapped_column(String(10))
    geschlecht: Mapped[str | None] = mapped_column(String(20))
    vorname: Mapped[str] = mapped_column(String(100))
    nachname: Mapped[str] = mapped_column(String(100))
    geburtsdatum: Mapped[date] = mapped_column(Date)
    email: Mapped[str] = mapped_column(String(320))
    telefon: Mapped[str | None] = mapped_column(String(50))
    strasse: Mapped[str | None] = mapped_column(String(200))
    plz: Mapped[str | None] = mapped_column(String(5))
    ort: Mapped[str | None] = mapped_column(String(200))
    krankenkasse: Mapped[str | None] = mapped_column(String(200))
    symptome: Mapped[list[str] | None] = mapped_column(JSONB)
    erfahrung_mit_psychotherapie: Mapped[bool | None] = mapped_column(Boolean)
    offen_fuer_gruppentherapie: Mapped[bool | None] = mapped_column(Boolean)
    bevorzugtes_therapieverfahren: Mapped[list[str] | None] = mapped_column(JSONB)
    bevorzugtes_therapeutengeschlecht: Mapped[str | None] = mapped_column(String(20))
    zeitliche_verfuegbarkeit: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    raeumliche_verfuegbarkeit: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    verkehrsmittel: Mapped[str | None] = mapped_column(String(10))

    # The duplicate rule's keys (SPEC §6.1), normalised in Python (case folding is not lower()).
    # Text: case folding can lengthen a value ("ß" → "ss"), so the field lengths do not bound them.
    match_email: Mapped[str] = mapped_column(Text)
    match_vorname: Mapped[str] = mapped_column(Text)
    match_nachname: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("uq_patients_identity", "match_email", "match_vorname", "match_nachname",
              unique=True, postgresql_where=text("deleted_at IS NULL")),
        Index("ix_patients_email", "email"),
        Index("ix_patients_name_birth", "match_nachname", "match_vorname", "geburtsdatum"),
        Index("ix_patients_updated_at", "updated_at"),
        {"schema": SCHEMA},
    )


class PatientVersion(VersionRowMixin, Model):
    __tablename__ = "patient_versions"
    __table_args__ = (
        Index("uq_patient_versions_record_version", "record_id", "version", unique=True),
        {"schema": SCHEMA},
    )
    record_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.patients.id", ondelete="CASCADE"))


class Registration(Model):
    """One registration on the website: the file that brought it, by its token (SPEC §7.1.6)."""

    __tablename__ = "registrations"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.patients.id", ondelete="CASCADE"), index=True)
    token: Mapped[str] = mapped_column(String(100), unique=True)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    import_id: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = ({"schema": SCHEMA},)


class Consent(Model):
    """Proof of consent: `consent_metadata` of a registration, stored in full (SPEC §7.1.7)."""

    __tablename__ = "consents"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.patients.id", ondelete="CASCADE"), index=True)
    registration_id: Mapped[int | None] = mapped_column(ForeignKey(f"{SCHEMA}.registrations.id", ondelete="SET NULL"))
    consent_version: Mapped[str | None] = mapped_column(String(50))
    given_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = ({"schema": SCHEMA},)


# ---- tables every service has, their columns shared (shared/imports/models.py, shared/batch) ----

class ImportRecord(ImportRecordMixin, Model):
    __table_args__ = ImportRecordMixin.table_args(SCHEMA)


class Alert(AlertMixin, Model):
    __table_args__ = AlertMixin.table_args(SCHEMA)


class ImporterState(ImporterStateMixin, Model):
    __table_args__ = ImporterStateMixin.table_args(SCHEMA)


IMPORT_MODELS = ImportModels(record=ImportRecord, alert=Alert, state=ImporterState)


class IdempotencyKey(IdempotencyKeyMixin, Model):
    __table_args__ = IdempotencyKeyMixin.table_args(SCHEMA)


class OutboxEvent(OutboxEventMixin, Model):
    __table_args__ = OutboxEventMixin.table_args(SCHEMA)


class EventRelayState(RelayStateMixin, Model):
    __table_args__ = RelayStateMixin.table_args(SCHEMA)


EVENT_MODELS = register_event_tables(SCHEMA, outbox=OutboxEvent, state=EventRelayState)


# ---- data protection (SPEC §10): hold ids, actors, times and counts only, never personal data ----

class Erasure(Model):
    """A patient's erasure (SPEC §10.1): who erased which id when, why, and how much was removed."""

    __tablename__ = "erasures"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    patient_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    rows_removed: Mapped[dict[str, int]] = mapped_column(JSONB)  # table → rows deleted or scrubbed
    files_removed: Mapped[int] = mapped_column(Integer)
    files_pending: Mapped[int] = mapped_column(Integer)
    __table_args__ = ({"schema": SCHEMA},)


class BackupDeletion(Model):
    """A backup copy an erasure still has to delete. Written in the erasure's transaction and
    removed once the file is gone, so a crash after the commit leaves the work on record."""

    __tablename__ = "backup_deletions"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    erasure_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.erasures.id", ondelete="CASCADE"), index=True)
    file_name: Mapped[str] = mapped_column(Text)  # `<token>-<generation>.json`: no name in it
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = ({"schema": SCHEMA},)


class AccessLogEntry(Model):
    """One read of one patient's data (SPEC §10.3). No foreign key: the log outlives an erasure."""

    __tablename__ = "access_log"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    patient_id: Mapped[int] = mapped_column(BigInteger)
    what: Mapped[str] = mapped_column(String(20))
    __table_args__ = (
        Index("ix_access_log_patient_read_at", "patient_id", "read_at"),
        Index("ix_access_log_read_at", "read_at", postgresql_using="brin"),  # append-only: tiny, cheap to keep
        {"schema": SCHEMA},
    )
