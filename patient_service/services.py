"""The patient service layer: the only code that writes patients.

REST views, batch requests and the bucket importer all call these functions with data already
loaded by `PatientSchema`, plus who is acting (`source`, `actor`). Nothing here commits: the
caller's unit of work does (one request, one batch, one imported file).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from marshmallow import fields
from sqlalchemy import inspect, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import make_transient_to_detached

from patient_service.models import Consent, Erasure, Patient, PatientVersion, Registration
from patient_service.schemas import PatientSchema
from shared import versioning
from shared.bulk import PendingRows, PendingWrites, copy_values
from shared.db import IdReserver, unique_or_duplicate
from shared.errors import Conflict, Duplicate, Gone, NotFound
from shared.extensions import db
from shared.schemas import now_utc
from shared.text import fold

_schema = PatientSchema()
DATA_FIELDS = tuple(name for name, f in _schema.fields.items() if not f.dump_only)
IDENTITY_INDEX = "uq_patients_identity"


def identity_of(data: dict[str, Any]) -> tuple[str, str, str]:
    return fold(data["email"]), fold(data["vorname"]), fold(data["nachname"])


# What `PatientSchema` dumps, and the members of its nested groups, in its order.
_DUMPED = tuple(_schema.dump_fields)
_GROUP_MEMBERS = {name: tuple(field.schema.dump_fields) for name, field in _schema.dump_fields.items()
                  if isinstance(field, fields.Nested)}


def representation(patient: Patient) -> dict[str, Any]:
    """What `PatientSchema` dumps, built directly (tests/test_patient_representation.py checks the
    two agree): every write stores one as its version, and marshmallow's dump cost as much as the
    validation of a batch item."""
    dumped: dict[str, Any] = {}
    for name in _DUMPED:
        value = getattr(patient, name)
        if value is None:
            dumped[name] = None
        elif name in _GROUP_MEMBERS:
            dumped[name] = {key: list(value[key]) if isinstance(value[key], list) else value[key]
                            for key in _GROUP_MEMBERS[name] if key in value}
        elif isinstance(value, (date, datetime)):
            dumped[name] = value.isoformat()
        elif isinstance(value, list):
            dumped[name] = list(value)
        else:
            dumped[name] = value
    return dumped


def field_values(patient: Patient) -> dict[str, Any]:
    """The client-writable fields of a stored patient, in the shape `PatientSchema.load` returns."""
    return {name: getattr(patient, name) for name in DATA_FIELDS}


# ---- reads -------------------------------------------------------------------------------------

class Erased(Gone):
    """The patient's data were erased (SPEC §10.1): reads and writes of its id answer 410 `erased`."""

    status, type, title = 410, "erased", "Erased"


class PatientStore(versioning.VersionedStore[Patient, PatientVersion]):
    """The shared reads, where an id whose patient was erased is `Erased` rather than not found."""

    def get(self, record_id: versioning.RecordId, *, for_update: bool = False, include_deleted: bool = False,
            within: Any = None) -> Any:
        try:
            return super().get(record_id, for_update=for_update, include_deleted=include_deleted, within=within)
        except NotFound:
            erasure = db.session.scalars(select(Erasure).where(Erasure.patient_id == record_id)).first()
            if erasure is None:
                raise
            raise Erased(f"patient {record_id} was erased at {erasure.erased_at.isoformat()}",
                         erasure_id=erasure.id) from None


PATIENTS = PatientStore(Patient, PatientVersion, "patient")


def get_patient(patient_id: int, *, for_update: bool = False, include_deleted: bool = False) -> Patient:
    return PATIENTS.get(patient_id, for_update=for_update, include_deleted=include_deleted)


def get_patient_as_of(patient_id: int, at: datetime) -> dict[str, Any]:
    return PATIENTS.as_of(patient_id, at)


def list_patients(filters: dict[str, Any], *, page: int, page_size: int) -> tuple[list[Patient], int]:
    query = select(Patient).where(Patient.deleted_at.is_(None))
    if "email" in filters:
        query = query.where(Patient.match_email == fold(filters["email"]))
    if "vorname" in filters:
        query = query.where(Patient.match_vorname == fold(filters["vorname"]))
    if "nachname" in filters:
        query = query.where(Patient.match_nachname == fold(filters["nachname"]))
    if "geburtsdatum" in filters:
        query = query.where(Patient.geburtsdatum == filters["geburtsdatum"])
    if "plz" in filters:
        query = query.where(Patient.plz == filters["plz"])
    if "updated_since" in filters:
        query = query.where(Patient.updated_at >= filters["updated_since"])
    return PATIENTS.page(query, page=page, page_size=page_size)


def patient_history(patient_id: int) -> list[PatientVersion]:
    return PATIENTS.history(patient_id)


def find_by_identity(data: dict[str, Any], *, for_update: bool = False) -> Patient | None:
    """The live patient the duplicate rule says `data` is, if any (locked, with `for_update`)."""
    email, vorname, nachname = identity_of(data)
    query = select(Patient).where(Patient.match_email == email, Patient.match_vorname == vorname,
                                  Patient.match_nachname == nachname, Patient.deleted_at.is_(None))
    return db.session.scalars(query.with_for_update() if for_update else query).first()


def find_near_matches(data: dict[str, Any], *, exclude_id: int | None = None) -> list[int]:
    """Ids of live patients who share the e-mail but not the name, or name and birth date but
    not the e-mail: possibly the same person, not by the duplicate rule (SPEC §7.1.6)."""
    email, vorname, nachname = identity_of(data)
    same_email = (Patient.match_email == email) & ~(
        (Patient.match_vorname == vorname) & (Patient.match_nachname == nachname))
    same_person_data = ((Patient.match_vorname == vorname) & (Patient.match_nachname == nachname)
                        & (Patient.geburtsdatum == data["geburtsdatum"]) & (Patient.match_email != email))
    query = select(Patient.id).where(Patient.deleted_at.is_(None), same_email | same_person_data)
    if exclude_id is not None:
        query = query.where(Patient.id != exclude_id)
    return list(db.session.scalars(query.order_by(Patient.id)))


# ---- writes ------------------------------------------------------------------------------------

def _apply(patient: Patient, data: dict[str, Any]) -> None:
    for name in DATA_FIELDS:
        setattr(patient, name, data.get(name))
    patient.match_email, patient.match_vorname, patient.match_nachname = identity_of(data)


def _write_guarding_identity(patient: Patient, data: dict[str, Any], **bookkeeping: Any) -> None:
    """Apply `data` (and `bookkeeping` such as the version) to `patient` and flush, in a savepoint
    where the identity index turns a duplicate into `Duplicate(existing_id)`."""
    email, vorname, nachname = identity_of(data)
    existing = select(Patient.id).where(
        Patient.match_email == email, Patient.match_vorname == vorname, Patient.match_nachname == nachname,
        Patient.deleted_at.is_(None), Patient.id != patient.id if patient.id else true())
    with unique_or_duplicate(IDENTITY_INDEX, lambda: db.session.scalars(existing).first(),
                             "a patient with this e-mail address and name already exists"):
        _apply(patient, data)
        for name, value in bookkeeping.items():
            setattr(patient, name, value)
        db.session.add(patient)
        db.session.flush()


def _record(patient: Patient, *, source: str, actor: str, now: datetime,
            versions: PendingRows[dict[str, Any]] | None = None) -> None:
    """Write `patient`'s version (and its event); with `versions` (a batch's), leave the row there,
    for the batch to write all of them at once (`finish_batch`)."""
    if versions is None:
        versioning.add_version(PatientVersion, patient, representation(patient),
                               source=source, actor=actor, changed_at=now)
        return
    versions.append(versioning.version_row(patient, representation(patient), source=source, actor=actor,
                                           changed_at=now))


def create_patient(data: dict[str, Any], *, source: str, actor: str, now: datetime | None = None,
                   reserved_id: int | None = None, versions: PendingRows[dict[str, Any]] | None = None,
                   created: PendingRows[Patient] | None = None) -> Patient:
    """Create a patient and its first version.

    Without `reserved_id` the insert is flushed at once in a savepoint, and a duplicate raises
    `Duplicate`. With one (from `BatchContext`), nothing is flushed here: the caller flushes many
    at once and handles an `IntegrityError` itself (a batch then redoes its items one by one).
    `versions`: see `_record`. `created` (a batch's, with `reserved_id`): the new patient is left
    there, outside the session, for the batch to write all of them by COPY (`finish_batch`).
    """
    now = now or now_utc()
    patient = Patient(version=1, created_at=now, updated_at=now)
    if reserved_id is None:
        _write_guarding_identity(patient, data)
    else:
        patient.id = reserved_id
        _apply(patient, data)
        if created is None:
            db.session.add(patient)
        else:
            created.append(patient)
    _record(patient, source=source, actor=actor, now=now, versions=versions)
    return patient


def update_patient(patient: Patient, data: dict[str, Any], *, source: str, actor: str,
                   now: datetime | None = None, versions: PendingRows[dict[str, Any]] | None = None) -> bool:
    """Replace `patient`'s fields with `data`. Returns False (and writes nothing) if nothing changed.
    `versions`: see `_record`."""
    if field_values(patient) == {name: data.get(name) for name in DATA_FIELDS}:
        return False
    now = now or now_utc()
    bookkeeping = {"version": patient.version + 1, "updated_at": now}
    if identity_of(data) != (patient.match_email, patient.match_vorname, patient.match_nachname):
        _write_guarding_identity(patient, data, **bookkeeping)  # only a new identity can collide
    else:
        _apply(patient, data)
        for name, value in bookkeeping.items():
            setattr(patient, name, value)
    _record(patient, source=source, actor=actor, now=now, versions=versions)
    return True


def replace_patient(patient_id: int, data: dict[str, Any], *, expected_versions: Collection[int] | None = None,
                    source: str, actor: str, now: datetime | None = None) -> Patient:
    patient = get_patient(patient_id, for_update=True)
    PATIENTS.check_version(patient, expected_versions)
    update_patient(patient, data, source=source, actor=actor, now=now)
    return patient


def patch_patient(patient_id: int, changes: dict[str, Any], *, expected_versions: Collection[int] | None = None,
                  source: str, actor: str, now: datetime | None = None) -> Patient:
    """Apply the fields present in `changes` (already validated with `partial=True`)."""
    patient = get_patient(patient_id, for_update=True)
    PATIENTS.check_version(patient, expected_versions)
    update_patient(patient, {**field_values(patient), **changes}, source=source, actor=actor, now=now)
    return patient


def delete_patient(patient_id: int, *, expected_versions: Collection[int] | None = None,
                   source: str, actor: str, now: datetime | None = None) -> Patient:
    now = now or now_utc()
    patient = get_patient(patient_id, for_update=True)
    PATIENTS.check_version(patient, expected_versions)
    patient.deleted_at = now
    patient.updated_at = now
    patient.version += 1
    db.session.flush()
    _record(patient, source=source, actor=actor, now=now)
    return patient


# ---- registrations and consents (the bucket importer's unit of work) ------------------------------

def record_consent(patient: Patient, registration: Registration | None, metadata: dict[str, Any],
                   *, given_at: datetime, now: datetime | None = None) -> Consent:
    consent = Consent(patient_id=patient.id, registration_id=registration.id if registration else None,
                      consent_version=metadata.get("consent_version"), given_at=given_at,
                      metadata_=metadata, recorded_at=now or now_utc())
    db.session.add(consent)
    return consent


def _same_person_or_conflict(patient: Patient, data: dict[str, Any]) -> None:
    """A re-sent registration may correct the e-mail address or the name, not both: tokens are
    short, and a file that shares a token but names someone else must not overwrite that patient."""
    email, vorname, nachname = identity_of(data)
    if email != patient.match_email and (vorname, nachname) != (patient.match_vorname, patient.match_nachname):
        raise Conflict(f"registration token already belongs to patient {patient.id}, a different person "
                       "(e-mail address and name both differ); the file was not applied")


def import_registration(data: dict[str, Any], consent_metadata: dict[str, Any], *, token: str,
                        registered_at: datetime, consent_given_at: datetime, import_id: int | None,
                        sha256: str | None, source: str, actor: str,
                        now: datetime | None = None) -> tuple[Patient, str, list[str]]:
    """Apply one registration (SPEC §7.1.6): returns the patient, what happened to it
    (`created`, `updated`, `unchanged`) and warnings.

    - The same token again is the same registration: the patient is updated if the data differ
      (unless e-mail address and name both differ: then it is someone else, a `Conflict`).
    - Otherwise the duplicate rule: a match is updated in place and gets this registration.
    - Otherwise a new patient; a near match (same e-mail, other name; or same name and birth
      date, other e-mail) is named in a warning.
    Every registration's `consent_metadata` is kept in full as a consent record.
    """
    now = now or now_utc()
    registration = db.session.scalars(
        select(Registration).where(Registration.token == token).with_for_update()).first()
    if registration is not None:
        registered = get_patient(registration.patient_id, for_update=True)
        _same_person_or_conflict(registered, data)
        changed = update_patient(registered, data, source=source, actor=actor, now=now)
        known = db.session.scalars(select(Consent.metadata_).where(
            Consent.registration_id == registration.id)).all()
        if consent_metadata not in known:
            record_consent(registered, registration, consent_metadata, given_at=consent_given_at, now=now)
        return registered, ("updated" if changed else "unchanged"), []
    patient, action, warnings = _registered_patient(data, source=source, actor=actor, now=now)
    registration = Registration(patient_id=patient.id, token=token, registered_at=registered_at,
                                import_id=import_id, sha256=sha256, created_at=now)
    db.session.add(registration)
    db.session.flush()
    record_consent(patient, registration, consent_metadata, given_at=consent_given_at, now=now)
    return patient, action, warnings


def _registered_patient(data: dict[str, Any], *, source: str, actor: str,
                        now: datetime) -> tuple[Patient, str, list[str]]:
    """The patient a new registration belongs to, by the duplicate rule: a match updated in place,
    else a new patient (a near match named in a warning)."""
    patient = find_by_identity(data)
    if patient is None:
        near = find_near_matches(data)
        try:
            created = create_patient(data, source=source, actor=actor, now=now)
            return created, "created", [f"possible duplicate of patient {other}: same e-mail address, or same "
                                        f"name and birth date, but not both" for other in near]
        except Duplicate as duplicate:  # created by someone else a moment ago
            if duplicate.existing_id is None:  # and gone again: nothing to update, the clash stands
                raise
            patient = get_patient(duplicate.existing_id, for_update=True)
    else:
        patient = get_patient(patient.id, for_update=True)
    changed = update_patient(patient, data, source=source, actor=actor, now=now)
    return patient, "updated" if changed else "unchanged", []


def patient_consents(patient_id: int) -> list[Consent]:
    get_patient(patient_id, include_deleted=True)
    return list(db.session.scalars(select(Consent).where(Consent.patient_id == patient_id).order_by(Consent.id)))


def patient_registrations(patient_id: int) -> list[Registration]:
    get_patient(patient_id, include_deleted=True)
    return list(db.session.scalars(
        select(Registration).where(Registration.patient_id == patient_id).order_by(Registration.id)))


_PATIENT_COLUMNS = tuple(column.name for column in Patient.__table__.columns)
_JSONB_COLUMNS = frozenset(column.name for column in Patient.__table__.columns if isinstance(column.type, JSONB))


def _stored(patient: Patient, column: str) -> Any:
    """A created patient's column value as the ORM would store it: None in a jsonb column is JSON null."""
    value = getattr(patient, column)
    return "null" if value is None and column in _JSONB_COLUMNS else value


def _row(patient: Patient) -> list[Any]:
    return [_stored(patient, column) for column in _PATIENT_COLUMNS]


_copy_patients = copy_values(Patient.__table__, _PATIENT_COLUMNS, _row)


def _write_created(patients: list[Patient]) -> None:
    """COPY the batch's new patients — those a later item did not write already (a new identity
    is flushed at once, to guard it) — and make them persistent, as if loaded: later changes in
    the batch are UPDATEs."""
    created = [patient for patient in patients if inspect(patient).transient]
    _copy_patients(created)
    for patient in created:
        make_transient_to_detached(patient)
        db.session.add(patient)


@dataclass
class BatchContext:
    """What a batch knows before it writes: its matches, looked up and locked in one query each,
    and ids for its creates; and what it leaves for `finish_batch` to write together: the patients
    it created, then every version row."""

    by_id: dict[int, Patient]
    by_identity: dict[tuple[str, str, str], Patient]
    ids: IdReserver
    created: PendingRows[Patient] = field(default_factory=lambda: PendingRows(Patient.__tablename__, _write_created))
    versions: PendingRows[dict[str, Any]] = field(default_factory=lambda: versioning.pending_versions(PatientVersion))


def prepare_batch(items: list[dict[str, Any]]) -> BatchContext:
    ids = [item["id"] for item in items if item.get("id") is not None]
    identities = list({identity_of(item) for item in items if item.get("id") is None})
    by_id = {p.id: p for p in db.session.scalars(
        select(Patient).where(Patient.id.in_(ids), Patient.deleted_at.is_(None)).with_for_update())} if ids else {}
    by_identity = {}
    if identities:
        # By e-mail alone, the identity index's first column (a row-value IN is planned poorly);
        # the names are matched here. Namesakes sharing an address are locked too: harmless.
        wanted = set(identities)
        matches = db.session.scalars(select(Patient).where(
            Patient.match_email.in_({email for email, _, _ in identities}),
            Patient.deleted_at.is_(None)).with_for_update())
        by_identity = {key: p for p in matches
                       if (key := (p.match_email, p.match_vorname, p.match_nachname)) in wanted}
    # Ids for every item that may create a patient, in one round trip when the first is needed.
    creates = sum(1 for item in items if item.get("id") is None and identity_of(item) not in by_identity)
    return BatchContext(by_id, by_identity, IdReserver(f"{Patient.__table__.schema}.patients_id_seq",
                                                       block=max(creates, 1)))


def finish_batch(context: BatchContext) -> None:
    """The batch's pending writes, one COPY per table; called at the end of the batch and before a
    delete item."""
    PendingWrites(context.created, context.versions).flush()


def upsert_patient(data: dict[str, Any], *, source: str, actor: str, now: datetime | None = None,
                   context: BatchContext | None = None) -> tuple[Patient, str]:
    """A batch item: match on our `id` if given, else by the duplicate rule; update in place
    (keeping the id) or create. Returns the patient and `created` / `updated` / `unchanged`."""
    data = dict(data)
    patient_id = data.pop("id", None)
    if patient_id is not None:
        patient = context.by_id.get(patient_id) if context else None
        patient = patient or get_patient(patient_id, for_update=True)  # also: 404 or 410
    elif context is not None:
        patient = context.by_identity.get(identity_of(data))
    else:
        patient = find_by_identity(data, for_update=True)
    action = None
    if patient is None:
        try:
            patient = create_patient(data, source=source, actor=actor, now=now,
                                     reserved_id=context.ids.next() if context else None,
                                     versions=context.versions if context else None,
                                     created=context.created if context else None)
            action = "created"
        except Duplicate as duplicate:  # created by someone else a moment ago
            if duplicate.existing_id is None:  # and gone again: nothing to update, the clash stands
                raise
            patient = get_patient(duplicate.existing_id, for_update=True)
    before = (patient.match_email, patient.match_vorname, patient.match_nachname)
    if action is None:
        action = "updated" if update_patient(patient, data, source=source, actor=actor, now=now,
                                             versions=context.versions if context else None) else "unchanged"
    if context is not None:  # later items of the batch see this one
        context.by_identity.pop(before, None)
        context.by_identity[(patient.match_email, patient.match_vorname, patient.match_nachname)] = patient
        context.by_id[patient.id] = patient
    return patient, action
