"""The participant tables: participants, the ids they are known by (aliases) and their versions."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.extensions import Model
from shared.versioning import VersionedRecordMixin, VersionRowMixin
from therapist_service.models import SCHEMA

ID_LENGTH = 200
IDENTITY_INDEX = "uq_participants_identity"
MID_INDEX = "uq_participants_mid"


class ParticipantAlias(Model):
    """Every id a participant is known by, its own `participantId` included: as the primary key,
    one id names at most one participant, whether it was first sent for them or learnt later."""

    __tablename__ = "participant_aliases"

    alias: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    participant_id: Mapped[str] = mapped_column(
        ForeignKey(f"{SCHEMA}.participants.id", ondelete="CASCADE"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        Index("ix_participant_aliases_participant_id", "participant_id"),
        {"schema": SCHEMA},
    )


class Participant(VersionedRecordMixin, Model):
    """A person taking part in appointments and events. `id` is the `participantId` under which
    they were first sent; it never changes (later ids become aliases)."""

    __tablename__ = "participants"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)  # type: ignore[assignment]
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(100))
    mid: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    username: Mapped[str | None] = mapped_column(String(200))
    attendance_status: Mapped[str | None] = mapped_column(String(100))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    batch_id: Mapped[str | None] = mapped_column(String(200))  # of the batch that last wrote it
    source: Mapped[str | None] = mapped_column(String(200))
    # The identity rule's keys (first name, last name, e-mail), folded in Python as the patient
    # duplicate rule does; all three set or none, so a participant without all three matches nobody.
    match_first_name: Mapped[str | None] = mapped_column(Text)
    match_last_name: Mapped[str | None] = mapped_column(Text)
    match_email: Mapped[str | None] = mapped_column(Text)

    aliases: Mapped[list[ParticipantAlias]] = relationship(
        order_by=(ParticipantAlias.created_at, ParticipantAlias.alias), lazy="selectin",
        cascade="all, delete-orphan", passive_deletes=True)

    __table_args__ = (
        Index(IDENTITY_INDEX, "match_email", "match_first_name", "match_last_name", unique=True),
        Index(MID_INDEX, "mid", unique=True),
        Index("ix_participants_email", "email"),
        Index("ix_participants_event_id", text("(metadata ->> 'eventId')")),
        {"schema": SCHEMA},
    )


class ParticipantVersion(VersionRowMixin, Model):
    __tablename__ = "participant_versions"
    __table_args__ = (
        Index("uq_participant_versions_record_version", "record_id", "version", unique=True),
        {"schema": SCHEMA},
    )
    record_id: Mapped[str] = mapped_column(  # type: ignore[assignment]
        ForeignKey(f"{SCHEMA}.participants.id", ondelete="CASCADE"))
