"""The transactional outbox (SPEC §9.1): one table per service schema, written in the same
transaction as the version row of every change, so an event exists exactly when the change does.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Table, Text, select, text
from sqlalchemy.orm import Mapped, mapped_column

from shared.bulk import JsonText, copy_lines, copy_value
from shared.db import compiled_insert
from shared.events.cloudevents import cloud_event, event_type
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
    models = event_models(version_model.__table__.schema)
    events = _events(version_model, rows)
    if len(events) == 1:
        db.session.add(models.outbox(**events[0].row()))  # flushed with the unit of work: no COPY for one line
    elif events:
        copy_lines(models.outbox_table, _EVENT_COLUMNS, (event.copy_line() for event in events))


def event_statement(version_model: Any, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event of one version row as an INSERT for the caller to send with its own statements in
    one round trip, in its transaction (`shared.versioning.version_statements`); its parameters are
    named `e_<column>`. No statement (`""`) while recording is off."""
    if not RECORDING:
        return "", {}
    (event,) = _events(version_model, [row])
    return _insert_sql(version_model.__table__.schema), {f"e_{key}": value for key, value in event.row().items()}


@cache
def _insert_sql(schema: str) -> str:
    return compiled_insert(event_models(schema).outbox_table, _EVENT_COLUMNS, "e_")


def _events(version_model: Any, rows: list[dict[str, Any]]) -> list[_Event]:
    table = version_model.__table__
    models = _BY_SCHEMA[table.schema]
    aggregate = aggregate_of(table.name)
    events = []
    for row, event_id in zip(rows, event_ids(len(rows)), strict=True):
        kind = "deleted" if row["deleted"] else "created" if row["version"] == 1 else "updated"
        if aggregate in PERSONS:
            after = json.loads(row["data"]) if isinstance(row["data"], JsonText) else row["data"]
            data: Any = {"id": row["record_id"], "version": row["version"],
                         "changed": changed_fields(_previous_data(version_model, row), after)}
            _remember(version_model, row)
        else:
            data = row["data"]
        envelope = _envelope(models.service, aggregate, kind, row["source"], row["actor"])
        events.append(envelope.event(event_id, row["record_id"], row["version"], row["changed_at"], data))
    return events


def record_erasure(service: str, aggregate: str, record_id: Any, *, version: int, actor: str,
                   time: datetime, origin: str = "api") -> None:
    """Record `<aggregate>.erased` in the current transaction: `{"id", "version", "changed": []}`,
    nothing else (the data is gone; the event only says so)."""
    models = _BY_SCHEMA[service]
    data = {"id": record_id, "version": version, "changed": []}
    envelope = _envelope(service, aggregate, "erased", origin, actor)
    db.session.add(models.outbox(**envelope.event(str(uuid.uuid4()), record_id, version, time, data).row()))


def event_ids(count: int) -> list[str]:
    """`count` random UUIDs (version 4, RFC 9562), as text: what `str(uuid.uuid4())` gives, made
    from one `os.urandom` call. The `uuid` module makes one at a time, a system call and an object
    each: 5 % of the 45,000-therapist import (py-spy) for its events' ids."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(byte & 0x0F | 0x40 for byte in raw[6::16])  # version 4
    raw[8::16] = bytes(byte & 0x3F | 0x80 for byte in raw[8::16])  # the RFC's variant
    digits = raw.hex()
    return [f"{digits[i:i + 8]}-{digits[i + 8:i + 12]}-{digits[i + 12:i + 16]}-{digits[i + 16:i + 20]}-"
            f"{digits[i + 20:i + 32]}" for i in range(0, 32 * count, 32)]


class _Envelope:
    """The serialised CloudEvent (`cloud_event`, as `json.dumps` writes it) of events alike but for
    their id, subject, time, sequence and data: serialised once, the variable parts put in per
    event. A bulk import records tens of thousands of events; serialising each envelope anew cost as
    much as a quarter of the import's Python time (bench/events.py), and a single appointment
    write a twentieth of its own (bench/api_write.py). Made by `_envelope`, which keeps them."""

    _HOLES = ("\x00", "\x01", "\x02", "\x03", "\x04")  # event id, subject, time, sequence, data: in document order

    def __init__(self, service: str, aggregate: str, kind: str, origin: str, actor: str) -> None:
        self.aggregate = aggregate
        self.type = event_type(aggregate, kind)
        document: dict[str, Any] = cloud_event(
            event_id=self._HOLES[0], service=service, aggregate=aggregate, kind=kind, subject=self._HOLES[1],
            sequence=self._HOLES[3], origin=origin, actor=actor, time=datetime.min,  # type: ignore[arg-type]
            data=self._HOLES[4])  # type: ignore[arg-type]
        document["time"] = self._HOLES[2]
        self.parts = re.split(r'"\\u000[0-4]"', json.dumps(document, ensure_ascii=False))
        assert len(self.parts) == 6, "the template has its five holes, in order"

    def event(self, event_id: str, record_id: Any, version: int, time: datetime,
              data: dict[str, Any] | JsonText) -> _Event:
        subject = str(record_id)
        quoted = f'"{subject}"' if type(record_id) is int else json.dumps(subject, ensure_ascii=False)
        head, after_id, after_subject, after_time, after_sequence, tail = self.parts
        serialised = data if isinstance(data, JsonText) else json.dumps(data, ensure_ascii=False, default=str)
        document = (f'{head}"{event_id}"{after_id}{quoted}{after_subject}"{time.isoformat()}"{after_time}'
                    f'{version}{after_sequence}{serialised}{tail}')
        return _Event(event_id, self.aggregate, subject, version, self.type, document)


@lru_cache(maxsize=1024)  # per service, aggregate, kind, origin and credential: few
def _envelope(service: str, aggregate: str, kind: str, origin: str, actor: str) -> _Envelope:
    return _Envelope(service, aggregate, kind, origin, actor)


@dataclass(frozen=True, slots=True)
class _Event:
    event_id: str
    aggregate: str
    record_id: str
    sequence: int
    type: str
    document: str

    def row(self) -> dict[str, Any]:
        return {column: getattr(self, column) for column in _EVENT_COLUMNS}

    def copy_line(self) -> str:
        return (f"{self.event_id}\t{self.aggregate}\t{copy_value(self.record_id)}\t{self.sequence}\t{self.type}\t"
                f"{copy_value(self.document)}\n")


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
