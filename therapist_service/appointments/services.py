"""The appointment service layer: the only code that writes appointments (SPEC §6.5).

REST views and batch requests call these functions with data loaded by `AppointmentWriteSchema`.
Nothing here commits but `write_appointment`, REST's single write, which is a transaction of its
own; everything else runs in the caller's unit of work.

Rules:
- *Latest wins*: an appointment is keyed on (`org_id`, `external_id`); a write whose `updatedAt`
  is older than or equal to the stored one is `ignored_stale` and writes nothing. A newer one is
  applied and versioned, even when only `updatedAt` moved (it is part of the representation, and
  keeping it is what makes a later, older write stale), and brings a cancelled appointment back.
- *No overlaps within an organisation*: the exclusion constraint `ex_appointments_no_overlap`
  decides; its violation (23P01) becomes `Overlap` naming the conflicting appointment.
- *One writer per organisation at a time*: every write first takes its organisations'
  transaction-scoped advisory locks, sorted. Two inserts of overlapping ranges can otherwise
  wait for each other inside the exclusion check (each sees the other's index entry) and end in a
  deadlock (40P01) instead of one 201 and one 409; and of two writes of one appointment the
  second reads what the first wrote, so the highest `updatedAt` wins whatever the arrival order.
- *Organisations kept apart* (SPEC §11): a credential bound to an organisation (`org`, from
  `Principal.org`) writes and lists that one only (`organisation_for`: another is
  `WrongOrganisation`, none means its own), and another organisation's appointment by id is 404,
  exactly as one that does not exist (`_within`). `org=None`: a credential that may name any.
"""
from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg2.errors
from sqlalchemy import DateTime, cast, select
from sqlalchemy.dialects.postgresql import distinct_on

from shared import versioning
from shared.bulk import JsonText, PendingRows, PendingWrites, copy_into, copy_value
from shared.db import own_transaction, page_of, prepared
from shared.errors import Overlap, WrongOrganisation
from shared.extensions import db
from shared.schemas import now_utc
from therapist_service.appointments.models import NO_OVERLAP, Appointment, AppointmentVersion
from therapist_service.models import SCHEMA

CREATED, UPDATED, IGNORED_STALE = "created", "updated", "ignored_stale"
DEFAULT_ORG = "default"  # the organisation of a body without `orgId`, sent by an unbound credential

APPOINTMENTS = versioning.VersionedStore(Appointment, AppointmentVersion, "appointment")


def _int4(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


# The first key of every appointment lock (advisory locks are one namespace per database).
LOCK_NAMESPACE = _int4(zlib.crc32(b"therapist_service.appointments"))


def utc_text(value: datetime | None) -> str | None:
    """`2020-10-10T20:20:00.000Z`: the calendar API's form of an instant."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def representation(appointment: Appointment | NewAppointment) -> dict[str, Any]:
    """What `AppointmentSchema` describes: the list's, a read's and a version's `data`."""
    return {"id": str(appointment.id), "orgId": appointment.org_id, "externalId": appointment.external_id,
            "start": utc_text(appointment.start), "end": utc_text(appointment.end),
            "payloadCreatedAt": utc_text(appointment.payload_created_at),
            "payloadUpdatedAt": utc_text(appointment.payload_updated_at), "version": appointment.version}


# ---- locks ---------------------------------------------------------------------------------------

_PLANNED = "appointment_organisations_planned"


def _planned_organisations() -> frozenset[str]:
    """The organisations a batch in this transaction named in `prepare_batch`. A batch redone item
    by item (after an overlap) lost their locks with its savepoint: its first item takes them all
    again, sorted, rather than each item its own in item order, which could deadlock against
    another batch holding them sorted."""
    session = db.session()
    held = session.info.get(_PLANNED)
    return held[1] if held is not None and held[0] is session.get_transaction() else frozenset()


# unnest yields the keys in array order: the locks are taken sorted. Parameters in psycopg2's style:
# the single write sends it in one query with its read (`_READ`).
_LOCK = "SELECT pg_advisory_xact_lock(%(namespace)s, key) FROM unnest(%(keys)s::integer[]) AS key"


def _lock_parameters(org_ids: Iterable[str]) -> dict[str, Any]:
    """`_LOCK`'s parameters: one key per organisation, sorted — one order for everyone, so two
    writers never hold one each and wait for the other. The key is a CRC of the organisation: two
    practices that share one merely take turns."""
    return {"namespace": LOCK_NAMESPACE, "keys": sorted({_int4(zlib.crc32(org_id.encode())) for org_id in org_ids})}


def lock_organisations(org_ids: Iterable[str]) -> None:
    """Wait for, and hold until the transaction ends, the write lock of each organisation."""
    parameters = _lock_parameters(org_ids)
    if parameters["keys"]:
        db.session.connection().exec_driver_sql(_LOCK, parameters)


# ---- reads ---------------------------------------------------------------------------------------

def organisation_for(requested: str | None, bound: str | None) -> str:
    """The organisation a write or list is about: the one named, or without a name the
    credential's own (`"default"` for one bound to none); naming another than its own is refused."""
    if bound is None:
        return requested or DEFAULT_ORG
    if requested is not None and requested != bound:
        raise WrongOrganisation(f"this credential is bound to organisation {bound!r}; "
                                f"it cannot write or list {requested!r}")
    return bound


def bind_organisation(data: dict[str, Any], org: str | None) -> None:
    """Set a loaded appointment's `org_id` by `organisation_for` (a batch item's, before `prepare`)."""
    data["org_id"] = organisation_for(data.get("org_id"), org)


def _within(org: str | None) -> Any:
    return None if org is None else Appointment.org_id == org


def get_appointment(appointment_id: uuid.UUID, *, org: str | None = None) -> Appointment:
    return APPOINTMENTS.get(appointment_id, within=_within(org))


def get_appointment_as_of(appointment_id: uuid.UUID, at: datetime, *, org: str | None = None) -> dict[str, Any]:
    return APPOINTMENTS.as_of(appointment_id, at, within=_within(org))


def appointment_history(appointment_id: uuid.UUID, *, org: str | None = None) -> list[AppointmentVersion]:
    return APPOINTMENTS.history(appointment_id, within=_within(org))


def list_appointments(filters: dict[str, Any], *, page: int, page_size: int,
                      org: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """An organisation's active appointments ordered by start, now or (`at`) as they were then;
    `window_from` / `window_to` keep those overlapping that window."""
    filters = {**filters, "org": organisation_for(filters.get("org"), org)}
    if "at" in filters:
        return _list_as_of(filters, page=page, page_size=page_size)
    query = select(Appointment).where(Appointment.org_id == filters["org"], Appointment.deleted_at.is_(None))
    if "window_from" in filters:
        query = query.where(Appointment.end > filters["window_from"])
    if "window_to" in filters:
        query = query.where(Appointment.start < filters["window_to"])
    appointments, total = page_of(query.order_by(Appointment.start), order_by=Appointment.id,
                                  page=page, page_size=page_size)
    return [representation(appointment) for appointment in appointments], total


def _list_as_of(filters: dict[str, Any], *, page: int, page_size: int) -> tuple[list[dict[str, Any]], int]:
    """From the versions: each appointment's latest version written by `at`, unless a cancellation."""
    current_versions = (select(AppointmentVersion.id)
                        .join(Appointment, Appointment.id == AppointmentVersion.record_id)
                        .where(Appointment.org_id == filters["org"], AppointmentVersion.changed_at <= filters["at"])
                        .ext(distinct_on(AppointmentVersion.record_id))
                        .order_by(AppointmentVersion.record_id, AppointmentVersion.version.desc()))
    start = cast(AppointmentVersion.data["start"].astext, DateTime(timezone=True))
    end = cast(AppointmentVersion.data["end"].astext, DateTime(timezone=True))
    query = select(AppointmentVersion).where(AppointmentVersion.id.in_(current_versions),
                                             AppointmentVersion.deleted.is_(False))
    if "window_from" in filters:
        query = query.where(end > filters["window_from"])
    if "window_to" in filters:
        query = query.where(start < filters["window_to"])
    versions, total = page_of(query.order_by(start), order_by=AppointmentVersion.record_id,
                              page=page, page_size=page_size)
    return [version.data for version in versions], total


# ---- writes --------------------------------------------------------------------------------------

def _record(appointment: Appointment, *, source: str, actor: str, now: datetime) -> None:
    versioning.add_version(AppointmentVersion, appointment, representation(appointment),
                           source=source, actor=actor, changed_at=now)


@dataclass
class NewAppointment:
    """An appointment a batch creates, held as plain values until `finish_batch` copies them all in
    one COPY (an ORM object per item cost as much as validating it); the attributes of `Appointment`."""

    id: uuid.UUID
    org_id: str
    external_id: str
    start: datetime
    end: datetime
    payload_created_at: datetime | None
    payload_updated_at: datetime
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None  # as the ORM's: a batch never cancels (left out of its COPY)

    def copy_line(self) -> str:
        """Its row in COPY's text format, `NEW_APPOINTMENT_COLUMNS` (each value's type is known:
        no per-value dispatch; the two strings from the calendar are escaped)."""
        return (f"{self.id}\t{copy_value(self.org_id)}\t{copy_value(self.external_id)}\t{self.start.isoformat()}\t"
                f"{self.end.isoformat()}\t{copy_value(self.payload_created_at)}\t{self.payload_updated_at.isoformat()}"
                f"\t{self.version}\t{self.created_at.isoformat()}\t{self.updated_at.isoformat()}\n")


NEW_APPOINTMENT_COLUMNS = ("id", "org_id", "external_id", "start", "end", "payload_created_at",
                           "payload_updated_at", "version", "created_at", "updated_at")


@dataclass
class BatchContext:
    """What a batch knows before it writes: its organisations locked, their stored appointments
    it names looked up in one query; and what it writes, together, in `finish_batch`: its changed
    appointments (the session's flush), its new ones by one COPY, then all their versions."""

    by_key: dict[tuple[str, str], Appointment | NewAppointment]
    created: PendingRows[NewAppointment] = field(default_factory=lambda: PendingRows(
        Appointment.__tablename__, copy_into(Appointment.__table__, NEW_APPOINTMENT_COLUMNS, NewAppointment.copy_line)))
    versions: PendingRows[dict[str, Any]] = field(default_factory=lambda: versioning.pending_versions(AppointmentVersion))

    @property
    def writes(self) -> PendingWrites:
        return PendingWrites(self.created, self.versions)


def prepare_batch(items: list[dict[str, Any]]) -> BatchContext:
    keys = {(item["org_id"], item["external_id"]) for item in items}
    organisations = frozenset(org_id for org_id, _ in keys)
    session = db.session()
    session.info[_PLANNED] = (session.get_transaction(), organisations)
    lock_organisations(organisations)
    stored: Iterable[Appointment] = db.session.scalars(select(Appointment).where(
        Appointment.org_id.in_(organisations),
        Appointment.external_id.in_({external_id for _, external_id in keys}))) if keys else []
    return BatchContext({key: a for a in stored if (key := (a.org_id, a.external_id)) in keys})


def _apply(appointment: Appointment | NewAppointment, data: dict[str, Any]) -> None:
    appointment.start = data["start"]
    appointment.end = data["end"]
    appointment.payload_created_at = data["payload_created_at"]
    appointment.payload_updated_at = data["payload_updated_at"]


def upsert_appointment(data: dict[str, Any], *, source: str, actor: str, org: str | None = None,
                       now: datetime | None = None,
                       context: BatchContext | None = None) -> tuple[Appointment | NewAppointment, str]:
    """Create or update the appointment (`org_id`, `external_id`); returns it and `created`,
    `updated` or `ignored_stale` (nothing written). An overlap raises `Overlap`; an `org_id` other
    than a bound credential's (`org`) raises `WrongOrganisation`.

    Without a batch `context` (a batch redone item by item) it is `_write_one`: two round trips of
    plain SQL in the caller's transaction (`write_appointment` is the same as a transaction of its own).
    With a batch `context` the organisation is locked and the match looked up already, and the
    write is left to the batch's one flush and COPY (whose overlap makes the batch redo its items
    singly); a created one is then a `NewAppointment`."""
    bind_organisation(data, org)
    if context is None:
        return _write_one(data, source=source, actor=actor, now=now or now_utc())
    key = (data["org_id"], data["external_id"])
    appointment = context.by_key.get(key)
    if appointment is not None and data["payload_updated_at"] <= appointment.payload_updated_at:
        return appointment, IGNORED_STALE
    now = now or now_utc()
    if appointment is None:
        appointment = NewAppointment(uuid.uuid4(), data["org_id"], data["external_id"], data["start"], data["end"],
                                     data["payload_created_at"], data["payload_updated_at"], version=1,
                                     created_at=now, updated_at=now)
        context.created.append(appointment)
        action = CREATED
    else:
        _apply(appointment, data)
        appointment.version += 1
        appointment.updated_at = now
        appointment.deleted_at = None  # the calendar's newer word brings a cancelled one back
        action = UPDATED
    context.by_key[key] = appointment  # later items of the batch see this one
    context.versions.append(versioning.version_row(appointment, representation(appointment), source=source,
                                                   actor=actor, changed_at=now))
    return appointment, action


# One appointment's write in two round trips, the rules as above: (1) its organisations' locks
# (with those a batch planned, `_planned_organisations`) and the stored row; (2) the row, its
# version and its event (`versioning.version_statements`). The ORM's unit of work and flush cost
# more than the database work itself here (bench/api_write.py): plain SQL, prepared once per
# connection (`shared.db.prepared`), several statements sent at a time (psycopg2 sends a string of
# statements as one query; the last one's rows are the result). Alone (`write_appointment`) the
# first round trip begins the transaction and the second commits it; within a caller's
# transaction (a batch redone item by item) the second is a savepoint, so an overlap leaves the
# caller's transaction usable.
_TABLE = f"{SCHEMA}.{Appointment.__tablename__}"
_COLUMNS = (*NEW_APPOINTMENT_COLUMNS, "deleted_at")


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{column}"' for column in columns)  # "end" is a keyword


_READ = f"SELECT {_quoted(_COLUMNS)} FROM {_TABLE} WHERE org_id = %(org_id)s AND external_id = %(external_id)s"
_INSERT = (f"INSERT INTO {_TABLE} ({_quoted(NEW_APPOINTMENT_COLUMNS)}) "
           f"VALUES ({', '.join(f'%({column})s' for column in NEW_APPOINTMENT_COLUMNS)})")
_UPDATE = (f'UPDATE {_TABLE} SET start = %(start)s, "end" = %(end)s, payload_created_at = %(payload_created_at)s, '
           "payload_updated_at = %(payload_updated_at)s, version = %(version)s, updated_at = %(updated_at)s, "
           "deleted_at = NULL WHERE id = %(id)s")
# The active appointment of the organisation, other than the one written, whose time overlaps:
# asked after a 23P01, whose DETAIL would name it too but carries row values (never read or logged).
_CONFLICTING = (f'SELECT id FROM {_TABLE} WHERE org_id = %(org_id)s AND id <> %(id)s AND deleted_at IS NULL '
                f'AND start < %(end)s AND "end" > %(start)s ORDER BY start LIMIT 1')
_SAVEPOINT = "appointment_write"


@dataclass(frozen=True)
class _Transaction:
    """What goes around one appointment's statements: a transaction of its own, or a savepoint in
    the caller's."""

    begin: str  # before the locks
    write: str  # before the row's INSERT or UPDATE
    commit: str  # after the event's INSERT
    undo: str  # after an overlap


_ALONE = _Transaction("BEGIN;\n", "", ";\nCOMMIT", "ROLLBACK")
_WITHIN = _Transaction("", f"SAVEPOINT {_SAVEPOINT};\n", f";\nRELEASE SAVEPOINT {_SAVEPOINT}",
                       f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")


def write_appointment(data: dict[str, Any], *, source: str, actor: str, org: str | None = None,
                      now: datetime | None = None) -> tuple[NewAppointment, str]:
    """`upsert_appointment` as a transaction of its own, committed here: `POST /api/appointments`.
    On a pooled connection outside the ORM session (`shared.db.own_transaction`): `BEGIN` goes with
    the locks and the read, `COMMIT` with the writes. Same rules, same errors."""
    bind_organisation(data, org)
    with own_transaction() as cursor:
        return _write_with(cursor, data, {data["org_id"]}, source=source, actor=actor, now=now or now_utc(),
                           around=_ALONE)


def _write_one(data: dict[str, Any], *, source: str, actor: str, now: datetime) -> tuple[NewAppointment, str]:
    """One appointment within the caller's unit of work, on the session's connection."""
    db.session.flush()  # nothing is pending on the write path; anything that is goes first, in order
    cursor = db.session.connection().connection.cursor()
    try:
        return _write_with(cursor, data, {data["org_id"], *_planned_organisations()}, source=source, actor=actor,
                           now=now, around=_WITHIN)
    finally:
        cursor.close()


def _write_with(cursor: Any, data: dict[str, Any], organisations: set[str], *, source: str, actor: str,
                now: datetime, around: _Transaction) -> tuple[NewAppointment, str]:
    """The two round trips; `organisations`: those to lock (the appointment's, and a batch's planned)."""
    cursor.execute(around.begin + prepared(cursor, _LOCK, _READ),
                   {**_lock_parameters(organisations), "org_id": data["org_id"], "external_id": data["external_id"]})
    row = cursor.fetchone()
    stored = NewAppointment(*row) if row is not None else None
    if stored is not None and data["payload_updated_at"] <= stored.payload_updated_at:
        return stored, IGNORED_STALE  # alone: `own_transaction` rolls back
    if stored is None:
        appointment = NewAppointment(uuid.uuid4(), data["org_id"], data["external_id"], data["start"], data["end"],
                                     data["payload_created_at"], data["payload_updated_at"], version=1,
                                     created_at=now, updated_at=now)
    else:
        appointment = replace(stored, start=data["start"], end=data["end"],
                              payload_created_at=data["payload_created_at"],
                              payload_updated_at=data["payload_updated_at"], version=stored.version + 1,
                              updated_at=now, deleted_at=None)  # a newer word brings a cancelled one back
    version_inserts, version_parameters = versioning.version_statements(AppointmentVersion, versioning.version_row(
        appointment, JsonText(json.dumps(representation(appointment))), source=source, actor=actor, changed_at=now))
    parameters = {column: getattr(appointment, column) for column in NEW_APPOINTMENT_COLUMNS}
    parameters["id"] = str(appointment.id)
    statements = prepared(cursor, _UPDATE if stored else _INSERT, *version_inserts)
    try:
        cursor.execute(f"{around.write}{statements}{around.commit}", {**parameters, **version_parameters})
    except psycopg2.errors.ExclusionViolation as error:
        if error.diag.constraint_name != NO_OVERLAP:
            raise
        cursor.execute(around.undo)  # within: the caller's transaction goes on
        cursor.execute(_CONFLICTING, parameters)
        found = cursor.fetchone()
        raise Overlap(f"appointment {data['external_id']!r} overlaps another active appointment of "
                      f"organisation {data['org_id']!r}",
                      conflicting_id=str(found[0]) if found is not None else None) from None
    return appointment, CREATED if stored is None else UPDATED


def finish_batch(context: BatchContext) -> None:
    """Write the batch's pending writes (`BatchContext`): updates before creates, as the ORM's own
    flush orders them."""
    context.writes.flush()


@dataclass(frozen=True)
class BatchItemRecord:
    """What a batch answer says of an item's appointment: its id, as text (the answer is plain JSON)."""

    id: str


def upsert_batch_item(data: dict[str, Any], *, source: str, actor: str,
                      context: BatchContext | None = None) -> tuple[BatchItemRecord, str]:
    appointment, action = upsert_appointment(data, source=source, actor=actor, context=context)
    return BatchItemRecord(str(appointment.id)), action


def cancel_appointment(appointment_id: uuid.UUID, *, expected_versions: Collection[int] | None = None,
                       source: str, actor: str, org: str | None = None, now: datetime | None = None) -> Appointment:
    """Cancel: a version is written, its time is free again, reads give 410."""
    org_id = db.session.scalar(select(Appointment.org_id).where(Appointment.id == appointment_id))
    if org_id is not None and org in (None, org_id):
        lock_organisations([org_id])  # before its row: the order every writer takes them in
    appointment = APPOINTMENTS.get(appointment_id, for_update=True, within=_within(org))  # 404, 410
    APPOINTMENTS.check_version(appointment, expected_versions)
    now = now or now_utc()
    appointment.deleted_at = now
    appointment.updated_at = now
    appointment.version += 1
    _record(appointment, source=source, actor=actor, now=now)
    return appointment
