"""Columns of the import tables. Each service declares the concrete tables in its own schema:
`class ImportRecord(ImportRecordMixin, db.Model)` with `__table_args__ = ImportRecordMixin.table_args(SCHEMA)`."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.extensions import db

PENDING, PROCESSING, SUCCEEDED, PARTIAL, FAILED, QUARANTINED = (
    "pending", "processing", "succeeded", "partial", "failed", "quarantined")
STATUSES = (PENDING, PROCESSING, SUCCEEDED, PARTIAL, FAILED, QUARANTINED)
DONE = (SUCCEEDED, PARTIAL)
COUNT_KEYS = ("created", "updated", "unchanged", "deleted", "ignored_stale", "failed")


def empty_counts() -> dict[str, int]:
    return {key: 0 for key in COUNT_KEYS}


class ImportRecordMixin:
    """One attempt history of one version of one file (SPEC §6.3).

    A version is a bucket object's generation, or a folder file's content hash. `label` is what
    logs and alerts may say about the file: never a patient file name.
    """

    __tablename__ = "imports"

    if TYPE_CHECKING:  # the mapped class takes its columns as keywords
        def __init__(self, **columns: Any) -> None: ...

    @staticmethod
    def table_args(schema: str) -> tuple[Any, ...]:
        return (Index("ix_imports_source_name", "source", "name", "id"), Index("ix_imports_status", "status"),
                {"schema": schema})

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    label: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    generation: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    retry_round: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    counts: Mapped[dict[str, int]] = mapped_column(JSONB, nullable=False, default=empty_counts)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list)


class AlertMixin:
    """An alert e-mail, written in the same transaction as what it reports, sent later.

    `key` is unique: the same failure cannot be alerted twice, whichever worker sees it.
    """

    __tablename__ = "alerts"

    @staticmethod
    def table_args(schema: str) -> tuple[Any, ...]:
        return ({"schema": schema},)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    subject: Mapped[str] = mapped_column(Text, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    send_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class ImporterStateMixin:
    """One row per service: what every worker must agree on about the importer."""

    __tablename__ = "importer_state"

    @staticmethod
    def table_args(schema: str) -> tuple[Any, ...]:
        return ({"schema": schema},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_pass_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_pass_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source_down_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lock_holder: Mapped[str | None] = mapped_column(Text)
    lock_heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass
class ImportModels:
    """A service's three import tables, handed to the import framework."""

    record: type[ImportRecordMixin]
    alert: type[AlertMixin]
    state: type[ImporterStateMixin]


def importer_state(model: type[ImporterStateMixin], *, for_update: bool = False) -> ImporterStateMixin:
    """The service's one importer-state row, created on first use. Workers starting together may
    all try to create it: the insert does nothing when the row exists."""
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import insert

    db.session.execute(insert(model).values(id=1).on_conflict_do_nothing(index_elements=["id"]))
    query: Any = select(model).where(model.id == 1)
    return db.session.scalars(query.with_for_update() if for_update else query).one()
