"""Version rows: every change to a record writes its full representation (SPEC §5).

Each service declares its version table from `VersionRowMixin`; `add_version`, `history`
and `as_of` work on any such table. Every version written here also records its domain event in
the outbox, in the same transaction (SPEC §9.1): write versions only through this module.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from functools import cache, partial
from typing import Any, Generic, TypeVar

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import ColumnElement, Select

from shared.bulk import JsonText, PendingRows, copy_lines, copy_value
from shared.db import compiled_insert, page_of, prepared
from shared.errors import Gone, NotFound, PreconditionFailed
from shared.events import outbox
from shared.extensions import db

SOURCES = ("api", "batch", "import")
RecordId = int | str | uuid.UUID  # a sequence number, or (appointments, participants) a UUID or a text key


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


R = TypeVar("R", bound=VersionedRecordMixin)  # a record type
V = TypeVar("V", bound=VersionRowMixin)  # its version rows
T = TypeVar("T")


def version_row(record: Any, data: Any, *, source: str, actor: str, changed_at: datetime) -> dict[str, Any]:
    """`record`'s current state as its version `record.version`: the row `add_version` writes and
    `add_versions` takes. `data`: its representation (a dict, or `shared.bulk.JsonText`)."""
    return {"record_id": record.id, "version": record.version, "changed_at": changed_at, "source": source,
            "actor": actor, "data": data, "deleted": record.deleted_at is not None}


def add_version(model: type, record: VersionedRecordMixin, data: dict[str, Any], *, source: str, actor: str,
                changed_at: datetime) -> None:
    """Write `record`'s current state as its version `record.version`, and its domain event, at
    once: both INSERTs in one round trip on the session's connection, in its transaction, as
    statements prepared once per connection (`shared.db.prepared`). Two ORM objects flushed at
    commit cost about a fifth of a single patient write's CPU. The record itself must be in the
    database already (its version row refers to it): a created one is flushed before this."""
    row = version_row(record, JsonText(json.dumps(data)), source=source, actor=actor, changed_at=changed_at)
    statements, parameters = version_statements(model, row)
    cursor = db.session.connection().connection.cursor()
    try:
        cursor.execute(prepared(cursor, *statements), parameters)
    finally:
        cursor.close()


VERSION_COLUMNS = ("record_id", "version", "changed_at", "source", "actor", "data", "deleted")


def version_statements(model: Any, row: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """`row`'s version INSERT and its event's (keys as `add_versions`; `data` serialised already, as
    `JsonText`), as SQL statements and their parameters (`v_<column>`, `e_<column>`) for a caller
    that sends them in one round trip, with its own statements or alone: `add_version`, and the
    write path of one appointment."""
    if row["source"] not in SOURCES:
        raise ValueError(f"unknown source {row['source']!r}")
    event_sql, event_parameters = outbox.event_statement(model, row)
    parameters = {f"v_{column}": row[column] for column in VERSION_COLUMNS}
    parameters["v_record_id"] = str(row["record_id"])
    return tuple(filter(None, (_insert_sql(model), event_sql))), {**parameters, **event_parameters}


@cache
def _insert_sql(model: Any) -> str:
    return compiled_insert(model.__table__, VERSION_COLUMNS, "v_")


def add_versions(model: Any, rows: list[dict[str, Any]]) -> None:
    """Version rows written in bulk (one COPY; keys as the columns), and their events. A row's
    `data` may be `shared.bulk.JsonText`, serialised already: it is written as it is."""
    if any(row["source"] not in SOURCES for row in rows):
        raise ValueError("unknown source")
    shared: dict[tuple[datetime, str, str], str] = {}  # a bulk write's rows share time, source and actor

    def line(row: dict[str, Any]) -> str:
        key = (row["changed_at"], row["source"], row["actor"])
        middle = shared.get(key)
        if middle is None:
            middle = shared[key] = "\t".join(copy_value(value) for value in key)
        return (f'{copy_value(row["record_id"])}\t{row["version"]}\t{middle}\t{copy_value(row["data"])}\t'
                f'{"t" if row["deleted"] else "f"}\n')

    copy_lines(model.__table__, VERSION_COLUMNS, (line(row) for row in rows))
    outbox.record_versions(model, rows)


def pending_versions(model: Any) -> PendingRows[dict[str, Any]]:
    """Version rows (`version_row`) of a bulk write, written by `add_versions` with their events."""
    return PendingRows(model.__table__.name, partial(add_versions, model))


def history(model: type[V], record_id: RecordId) -> list[V]:
    return list(db.session.scalars(
        select(model).where(model.record_id == record_id).order_by(model.version.desc())))


def as_of(model: type[V], record_id: RecordId, at: datetime) -> V | None:
    """The version that was current at `at`, or None if the record did not exist yet."""
    return db.session.scalars(
        select(model).where(model.record_id == record_id, model.changed_at <= at)
        .order_by(model.version.desc()).limit(1)).first()


@dataclass(frozen=True)
class VersionedStore(Generic[R, V]):
    """Reads that every versioned record type has alike: by id (404 / 410), as of a moment,
    its history, a page of a query, and the `If-Match` check. `kind` names it in errors."""

    model: type[R]
    versions: type[V]
    kind: str

    def get(self, record_id: RecordId, *, for_update: bool = False, include_deleted: bool = False,
            within: ColumnElement[bool] | None = None) -> R:
        """The record (404, or 410 once deleted). `within`, a condition on the record's columns,
        limits what exists for this caller (an organisation's appointments): outside it, 404 as
        for an id that never existed, before any 410, so a caller learns nothing of the others."""
        query = select(self.model).where(self.model.id == record_id)
        if within is not None:
            query = query.where(within)
        record = db.session.scalars(query.with_for_update() if for_update else query).first()
        if record is None:
            raise NotFound(f"{self.kind} {record_id} does not exist")
        if record.deleted_at is not None and not include_deleted:
            raise Gone(f"{self.kind} {record_id} was deleted")
        return record

    def as_of(self, record_id: RecordId, at: datetime, *, within: ColumnElement[bool] | None = None) -> dict[str, Any]:
        self.get(record_id, include_deleted=True, within=within)  # 404 for an id that never existed
        row = as_of(self.versions, record_id, at)
        if row is None:
            raise NotFound(f"{self.kind} {record_id} did not exist at {at.isoformat()}")
        if row.deleted:
            raise Gone(f"{self.kind} {record_id} was deleted at {at.isoformat()}")
        return row.data

    def history(self, record_id: RecordId, *, within: ColumnElement[bool] | None = None) -> list[V]:
        self.get(record_id, include_deleted=True, within=within)
        return history(self.versions, record_id)

    def page(self, query: Select[T], *, page: int, page_size: int) -> tuple[list[T], int]:
        return page_of(query, order_by=self.model.id, page=page, page_size=page_size)

    def check_version(self, record: VersionedRecordMixin, expected_versions: Collection[int] | None) -> None:
        if expected_versions is not None and record.version not in expected_versions:
            raise PreconditionFailed(f"{self.kind} {record.id} is at version {record.version}; "
                                     "If-Match named another version")
