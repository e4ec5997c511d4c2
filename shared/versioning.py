"""Version rows: every change to a record writes its full representation (SPEC §5).

Each service declares its version table from `VersionRowMixin`; `add_version`, `history`
and `as_of` work on any such table.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.extensions import db

SOURCES = ("api", "batch", "import")


class VersionedRecordMixin:
    """Columns every versioned record has: ours, not the client's."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VersionRowMixin:
    """One row per version of one record. `(record_id, version)` is unique."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    record_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


def add_version(model: type, record: Any, data: dict[str, Any], *, source: str, actor: str,
                changed_at: datetime) -> None:
    """Write `record`'s current state as its version `record.version`."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    db.session.add(model(record_id=record.id, version=record.version, changed_at=changed_at,
                         source=source, actor=actor, data=data,
                         deleted=record.deleted_at is not None))


def history(model: type, record_id: int) -> list[Any]:
    return list(db.session.scalars(
        select(model).where(model.record_id == record_id).order_by(model.version.desc())))


def as_of(model: type, record_id: int, at: datetime) -> Any | None:
    """The version that was current at `at`, or None if the record did not exist yet."""
    return db.session.scalars(
        select(model).where(model.record_id == record_id, model.changed_at <= at)
        .order_by(model.version.desc()).limit(1)).first()
