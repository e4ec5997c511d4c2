"""Therapist service tables, all in the PostgreSQL schema `therapist_service`."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.extensions import db
from shared.imports.models import AlertMixin, ImporterStateMixin, ImportRecordMixin
from shared.versioning import VersionedRecordMixin, VersionRowMixin

SCHEMA = "therapist_service"
GROUPS = ("basic_info", "location", "contact", "professional_info", "availability")


class Therapist(VersionedRecordMixin, db.Model):
    __tablename__ = "therapists"

    external_id: Mapped[str | None] = mapped_column(String(200))
    last_modified: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    basic_info: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    location: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    contact: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    professional_info: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    availability: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)

    __table_args__ = (
        Index("uq_therapists_external_id", "external_id", unique=True),
        Index("ix_therapists_postcode", text("(location ->> 'postcode')")),
        Index("ix_therapists_city", text("lower(location ->> 'city')")),
        Index("ix_therapists_last_name", text("lower(basic_info ->> 'last_name')")),
        Index("ix_therapists_therapy_methods", text("(professional_info -> 'therapy_methods')"),
              postgresql_using="gin"),
        {"schema": SCHEMA},
    )


class TherapistVersion(VersionRowMixin, db.Model):
    __tablename__ = "therapist_versions"
    __table_args__ = (
        Index("uq_therapist_versions_record_version", "record_id", "version", unique=True),
        {"schema": SCHEMA},
    )
    record_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.therapists.id", ondelete="CASCADE"))


class ImportRecord(ImportRecordMixin, db.Model):
    __tablename__ = "imports"
    __table_args__ = (
        Index("ix_imports_source_name", "source", "name", "id"),
        Index("ix_imports_status", "status"),
        {"schema": SCHEMA},
    )


class Alert(AlertMixin, db.Model):
    __tablename__ = "alerts"
    __table_args__ = ({"schema": SCHEMA},)


class ImporterState(ImporterStateMixin, db.Model):
    __tablename__ = "importer_state"
    __table_args__ = ({"schema": SCHEMA},)
