"""The transactional outbox (SPEC §9.1): one table per service schema, written in the same
transaction as the version row of every change, so an event exists exactly when the change does.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Table, Text, select, text
from sqlalchemy.orm import Mapped, mapped_column

from shared.bulk import JsonText, copy_rows
from shared.events.cloudevents import cloud_event
from shared.extensions import db

AGGREGATES = ("patient", "therapist", "appointment", "participant")
PERSONS = frozenset({"patient", "participant"})  # thin events: no personal data leaves the service
BOOKKEEPING = frozenset({"id", "version", "created_at", "updated_at", "createdAt", "updatedAt"})


class OutboxEventMixin:
    """One event waiting for (or done with) the relay. `id` orders events as they were recorded;
    the relay marks rows published instead of remembering the last id (ids commit out of order)."""

    __tablename__ = "event_outbox"

    @staticmethod
    def table_args(schema: str) -> tuple[Any, ...]:
        return (Index("ix_event_outbox_pending", "id", postgresql_where=text("published_at IS NULL")),
                Index("ix_event_outbox_published_at", "published_at"), {"schema": schema})

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False)
    aggregate: Mapped[str] = mapped_column(String(20), nullable=False)
    record_id: Mapped[str] = mapped_column(String(200), nullable=False)  # participant ids are up to 200 characters
    sequence: Mapped[int] = mapped_column(Integer, nullable=False)
    type: Mapped[str] = mapped_column(String(80), nullable=False)
    # The CloudEvent as sent: serialised once when recorded, so the relay sends these exact bytes
    # and a re-send is byte-for-byte the same event.
    document: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                 server_default=text("now()"))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RelayStateMixin:
    """One row per service: what every worker's `/ready` shows about the relay."""

    __tablename__ = "event_relay_state"

    @staticmethod
    def table_args(schema: str) -> tuple[Any, ...]:
        return ({"schema": schema},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    broker_down_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass
class EventModels:
    service: str
    outbox: type[OutboxEventMixin]
    state: type[RelayStateMixin]

    @property
    def outbox_table(self) -> Table:
        return self.outbox.__table__  # type: ignore[attr-defined]  # a mapped class has its table


_BY_SCHEMA: dict[str, EventModels] = {}


def register_event_tables(service: str, outbox: type[OutboxEventMixin], state: type[RelayStateMixin]) -> EventModels:
    """Make a service's `event_outbox` and `event_relay_state` classes known to the recording hook
    and the relay (a service's schema is its name)."""
    models = EventModels(service=service, outbox=outbox, state=state)
    _BY_SCHEMA[service] = models
    return models


def event_models(service: str) -> EventModels:
    return _BY_SCHEMA[service]


def aggregate_of(version_table: str) -> str:
    """`patient_versions` → `patient`; `appointment_participant_versions` → `participant`."""
    name = version_table.removesuffix("_versions")
    for aggregate in AGGREGATES:
        if name == aggregate or name.endswith(f"_{aggregate}") or name == f"{aggregate}s":
            return aggregate
    raise ValueError(f"version table {version_table} belongs to no event aggregate {AGGREGATES}")


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Names of the fields whose value differs (a created record: those that have a value)."""
    before = before or {}
    names = (set(before) | set(after)) - BOOKKEEPING
    return sorted(name for name in names if before.get(name) != after.get(name))


# ---- recording ----------------------------------------------------------------------------------

# The bench measures an import with the outbox and without it in one run (bench/events.py);
# nothing else turns recording off.
RECORDING = True


_EVENT_COLUMNS = ("event_id", "aggregate", "record_id", "sequence", "type", "document")


def record_versions(version_model: Any, rows: list[dict[str, Any]]) -> None:
    """Record one event per version row (keys as `VersionRowMixin`: record_id, version,
    changed_at, source, actor, data, deleted), in the current transaction.

    `shared.versioning` calls this for every version it writes; nothing else needs to.
    """
    if not RECORDING:
        return
    table = version_model.__table__
    models = _BY_SCHEMA[table.schema]
    aggregate = aggregate_of(table.name)
    events = []
    for row in rows:
        kind = "deleted" if row["deleted"] else "created" if row["version"] == 1 else "updated"
        if aggregate in PERSONS:
            after = json.loads(row["data"]) if isinstance(row["data"], JsonText) else row["data"]
            data = {"id": row["record_id"], "version": row["version"],
                    "changed": changed_fields(_previous_data(version_model, row), after)}
            _remember(version_model, row)
        else:
            data = row["data"]
        events.append(_outbox_row(models.service, aggregate, kind, row["record_id"], row["version"],
                                  origin=row["source"], actor=row["actor"], time=row["changed_at"], data=data))
    if len(events) == 1:
        db.session.add(models.outbox(**events[0]))  # flushed with the version row, in one round trip
    elif events:
        copy_rows(models.outbox_table, _EVENT_COLUMNS, ([event[column] for column in _EVENT_COLUMNS]
                                                            for event in events))


def record_erasure(service: str, aggregate: str, record_id: Any, *, version: int, actor: str,
                   time: datetime, origin: str = "api") -> None:
    """Record `<aggregate>.erased` in the current transaction: `{"id", "version", "changed": []}`,
    nothing else (the data is gone; the event only says so)."""
    models = _BY_SCHEMA[service]
    data = {"id": record_id, "version": version, "changed": []}
    db.session.add(models.outbox(**_outbox_row(service, aggregate, "erased", record_id, version,
                                               origin=origin, actor=actor, time=time, data=data)))


def _outbox_row(service: str, aggregate: str, kind: str, record_id: Any, version: int, *, origin: str,
                actor: str, time: datetime, data: dict[str, Any] | JsonText) -> dict[str, Any]:
    """`data` already serialised (`JsonText`, a bulk write's version data) is put in as it is:
    the same bytes `json.dumps` writes, `data` being the event's last member."""
    event_id = str(uuid.uuid4())
    serialised = data if isinstance(data, JsonText) else None
    document = cloud_event(event_id=event_id, service=service, aggregate=aggregate, kind=kind,
                           subject=str(record_id), sequence=version, origin=origin, actor=actor,
                           time=time, data={} if isinstance(data, JsonText) else data)
    written = json.dumps(document, ensure_ascii=False, default=str)
    if serialised is not None:
        written = written[:-len('{}}')] + serialised + "}"
    return {"event_id": event_id, "aggregate": aggregate, "record_id": str(record_id), "sequence": version,
            "type": document["type"], "document": written}


# A person's `changed` list needs the previous version's data. Versions written earlier in the
# same transaction are remembered here (they may not be flushed yet); older ones are read back.

def _memory() -> dict[tuple[str, Any, int], dict[str, Any]]:
    session = db.session()
    transaction = session.get_transaction()
    held = session.info.get("events_previous")
    if held is None or held[0] is not transaction:
        held = session.info["events_previous"] = (transaction, {})
    return held[1]


def _remember(version_model: Any, row: dict[str, Any]) -> None:
    _memory()[(version_model.__table__.fullname, row["record_id"], row["version"])] = row["data"]


def _previous_data(version_model: Any, row: dict[str, Any]) -> dict[str, Any] | None:
    if row["version"] <= 1:
        return None
    key = (version_model.__table__.fullname, row["record_id"], row["version"] - 1)
    remembered = _memory().get(key)
    if remembered is not None:
        return remembered
    with db.session.no_autoflush:  # a batch flushes its pending creates itself, when it chooses
        return db.session.scalar(select(version_model.data).where(
            version_model.record_id == row["record_id"], version_model.version == row["version"] - 1))
