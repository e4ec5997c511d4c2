"""The appointment tables: appointments (one row per (`org_id`, `external_id`)) and their versions."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, String, Uuid, func, text
from sqlalchemy.dialects.postgresql import ExcludeConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.extensions import Model
from shared.versioning import VersionedRecordMixin, VersionRowMixin
from therapist_service.models import SCHEMA

KEY_INDEX = "uq_appointments_org_external_id"
NO_OVERLAP = "ex_appointments_no_overlap"


class Appointment(VersionedRecordMixin, Model):
    """An appointment of a practice (`org_id`). `deleted_at` is set when it is cancelled: a
    cancelled appointment holds no time, so the exclusion constraint covers active ones only."""

    __tablename__ = "appointments"

    # A UUID rather than the mixin's sequence number (SPEC §6.5): the mapped type differs by design.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # type: ignore[assignment]
    org_id: Mapped[str] = mapped_column(String(100), nullable=False)
    external_id: Mapped[str] = mapped_column(String(200), nullable=False)
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    payload_created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payload_updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        Index(KEY_INDEX, "org_id", "external_id", unique=True),
        Index("ix_appointments_org_start", "org_id", "start"),
        # Half-open ranges: an appointment may start when another ends. `=` on text in a GiST
        # index needs the btree_gist extension (the migration creates it).
        ExcludeConstraint(("org_id", "="), (func.tstzrange(text("start"), text('"end"'), text("'[)'")), "&&"),
                          name=NO_OVERLAP, using="gist", where=text("deleted_at IS NULL")),
        {"schema": SCHEMA},
    )


class AppointmentVersion(VersionRowMixin, Model):
    __tablename__ = "appointment_versions"
    __table_args__ = (
        Index("uq_appointment_versions_record_version", "record_id", "version", unique=True),
        {"schema": SCHEMA},
    )
    record_id: Mapped[uuid.UUID] = mapped_column(  # type: ignore[assignment]  # the appointment's UUID
        ForeignKey(f"{SCHEMA}.appointments.id", ondelete="CASCADE"))
