"""Therapist service tables, all in the PostgreSQL schema `therapist_service`."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.batch import IdempotencyKeyMixin
from shared.events import register_event_tables
from shared.events.outbox import OutboxEventMixin, RelayStateMixin
from shared.extensions import Model
from shared.imports.models import AlertMixin, ImporterStateMixin, ImportModels, ImportRecordMixin
from shared.versioning import VersionedRecordMixin, VersionRowMixin

SCHEMA = "therapist_service"
GROUPS = ("basic_info", "location", "contact", "professional_info", "availability")


class Therapist(VersionedRecordMixin, Model):
    __tablename__ = "therapists"

    external_id: Mapped[str | None] = mapped_column(String(200))
    last_modified: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    basic_info: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    location: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    contact: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    professional_info: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    availability: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    # A hash of the scraped entry as last imported (status and last_modified left out); any other
    # write clears it. An entry with the same fingerprint is unchanged without loading it again.
    import_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # Ids the scraper gave this therapist before it changed them (SPEC §7.2.6), oldest first.
    previous_external_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False,
                                                             server_default=text("'{}'::text[]"))
    # First and last name, postcode, street and house number, trimmed and case-folded in Python
    # (case folding is not lower()): how an entry under an unknown id finds its therapist (§7.2.6).
    practice_identity: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("uq_therapists_external_id", "external_id", unique=True),
        Index("ix_therapists_postcode", text("(location ->> 'postcode')")),
        Index("ix_therapists_city", text("lower(location ->> 'city')")),
        Index("ix_therapists_last_name", text("lower(basic_info ->> 'last_name')")),
        Index("ix_therapists_therapy_methods", text("(professional_info -> 'therapy_methods')"),
              postgresql_using="gin"),
        Index("ix_therapists_previous_external_ids", "previous_external_ids", postgresql_using="gin"),
        Index("ix_therapists_practice_identity", "practice_identity"),
        {"schema": SCHEMA},
    )


class TherapistVersion(VersionRowMixin, Model):
    __tablename__ = "therapist_versions"
    __table_args__ = (
        Index("uq_therapist_versions_record_version", "record_id", "version", unique=True),
        {"schema": SCHEMA},
    )
    record_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.therapists.id", ondelete="CASCADE"))


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
