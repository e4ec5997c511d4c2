"""The participant service layer: the only code that writes participants (SPEC §6.6).

Identity, per item: (1) a participant known by the item's `participantId` (its own id or an
alias); (2) else, with first name, last name and e-mail all sent, the participant with the same
three, folded as the patient duplicate rule folds them — updated in place, the incoming id becomes
an alias; (3) else a new participant. The database holds the rules (ids and aliases one primary
key, a unique MID, a unique identity), so racing batches cannot create one person twice.

A batch reads the participants its items may match in one locked query, works on plain rows in
memory, and writes what changed with one statement per table (`write_pending`). Nothing here
commits: the batch's unit of work does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from shared import versioning
from shared.batch import BatchAdapter, IdempotencyStore, Outcome, run_batch
from shared.bulk import JsonText, PendingRows, PendingWrites, copy_values, execute_many
from shared.errors import UPSTREAM_VALIDATION_STATUS, Conflict, InvalidData, NotFound
from shared.extensions import db
from shared.schemas import now_utc
from shared.text import fold
from therapist_service.models import IdempotencyKey
from therapist_service.participants.models import Participant, ParticipantAlias, ParticipantVersion
from therapist_service.participants.schemas import ParticipantItemSchema, ParticipantSchema

PARTICIPANTS = versioning.VersionedStore(Participant, ParticipantVersion, "participant")
IDENTITY_FIELDS = ("first_name", "last_name", "email")  # compared folded: another case is no change
PLAIN_FIELDS = ("phone", "username", "attendance_status", "meta", "mid")
_JSON_NULL = JsonText("null")  # metadata not sent: JSON null, as an INSERT through SQLAlchemy writes it
ATTEMPTS = 3  # an item written alone that meets a racing batch looks again (and then finds its rows)
TABLE, ALIASES = cast(Table, Participant.__table__), cast(Table, ParticipantAlias.__table__)
COLUMN_OF = {attribute.key: attribute.columns[0].name for attribute in Participant.__mapper__.column_attrs}

_representation = ParticipantSchema()
_item_schema = ParticipantItemSchema()
_item_schema.strings_checked_by_parent = True  # the batch's schema has looked at every string in it


class MidConflict(Conflict):
    type, title = "mid-conflict", "MID held by another participant"


class IdentityConflict(Conflict):
    type, title = "identity-conflict", "Identity held by another participant"


def representation(participant: Any) -> dict[str, Any]:
    return _representation.dump(participant)


def _version_data(participant: ParticipantRow) -> dict[str, Any]:
    """What `representation` dumps for a batch's row, built directly: the schema's dump cost a
    batch as much per item as loading the item. Keys and order as `ParticipantSchema`."""
    ordered = sorted(participant.aliases, key=lambda alias: (alias.created_at, alias.alias))
    return {"participantId": participant.id,
            "aliases": [alias.alias for alias in ordered if alias.alias != participant.id],
            "firstName": participant.first_name, "lastName": participant.last_name, "email": participant.email,
            "phone": participant.phone, "mid": participant.mid, "username": participant.username,
            "attendanceStatus": participant.attendance_status,
            "metadata": dict(participant.meta) if participant.meta is not None else None,
            "batchId": participant.batch_id, "source": participant.source, "version": participant.version,
            "createdAt": participant.created_at.isoformat(), "updatedAt": participant.updated_at.isoformat()}


Identity = tuple[str, str, str]


def identity_of(values: Any) -> Identity | None:
    """The folded (e-mail, first name, last name), or None unless all three are there."""
    get = values.get if isinstance(values, dict) else lambda name: getattr(values, name)
    email, first_name, last_name = get("email"), get("first_name"), get("last_name")
    if not (email and first_name and last_name):
        return None
    return fold(email), fold(first_name), fold(last_name)


def _matched_identity(participant: Any) -> Identity | None:
    """The identity a participant is stored under: its `match_*` columns, set from `identity_of`
    whenever it is written (all three or none), so it is not folded again."""
    if participant.match_email is None:
        return None
    return participant.match_email, participant.match_first_name, participant.match_last_name


# ---- the batch ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Provenance:
    """Who sent the batch: stored on every participant the batch writes."""

    batch_id: str | None
    source: str | None


def receive_batch(body: dict[str, Any], *, actor: str, key: str | None, keys: IdempotencyStore, path: str,
                  max_items: int) -> Outcome:
    """`POST /api/appointments/participants`: every item in one transaction, through the shared
    batch runner (its idempotency keys, its per-item results), answering 400 when any item fails
    or there are too many, as the participants upstream's specification says (SPEC §6.6)."""
    if len(body["participants"]) > max_items:
        raise InvalidData(f"{len(body['participants'])} participants sent; at most {max_items} per batch "
                          "(BATCH_MAX_ITEMS)", errors=[{"pointer": "/participants",
                                                        "detail": f"at most {max_items} participants"}],
                          status=UPSTREAM_VALIDATION_STATUS)
    provenance = Provenance(body.get("batch_id"), body.get("source"))
    adapter = BatchAdapter(item_schema=_item_schema, upsert=partial(receive_participant, provenance=provenance),
                           delete=None, key_model=IdempotencyKey, prepare=look_up, finish=write_pending)
    return run_batch(adapter, body["participants"], mode="transaction", dry_run=False, actor=actor, key=key,
                     keys=keys, path=path, body=body, max_items=max_items, items_pointer="/participants",
                     invalid_status=UPSTREAM_VALIDATION_STATUS)


@dataclass
class AliasRow:
    alias: str
    created_at: datetime


@dataclass
class ParticipantRow:
    """A participant as a batch works on it: read from the table (`stored`) or created by the
    batch; represented as a stored one is (`ParticipantSchema` reads the same attributes)."""

    id: str
    created_at: datetime
    updated_at: datetime
    version: int = 1
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    mid: str | None = None
    username: str | None = None
    attendance_status: str | None = None
    meta: dict[str, Any] | None = None
    batch_id: str | None = None
    source: str | None = None
    match_first_name: str | None = None
    match_last_name: str | None = None
    match_email: str | None = None
    deleted_at: datetime | None = None
    aliases: list[AliasRow] = field(default_factory=list)
    stored: bool = False

    def values(self) -> dict[str, Any]:
        """The table's columns (by column name) of this row."""
        return {column: getattr(self, key) for key, column in COLUMN_OF.items()}


def _changed_values(row: ParticipantRow) -> dict[str, Any]:
    return {**{column: value for column, value in row.values().items() if column not in ("id", "created_at")},
            "row_id": row.id}


def _created_values(row: ParticipantRow) -> list[Any]:
    return [_JSON_NULL if value is None and column == "metadata" else value for column, value in row.values().items()]


def _alias_values(alias: dict[str, Any]) -> dict[str, Any]:
    return alias


def _alias_row(alias: dict[str, Any]) -> list[Any]:
    return [alias[column] for column in _ALIAS_COLUMNS]


_update_changed = execute_many(update(TABLE).where(TABLE.c.id == bindparam("row_id")), _changed_values)
_copy_participants = copy_values(TABLE, list(COLUMN_OF.values()), _created_values)
_ALIAS_COLUMNS = ("alias", "participant_id", "created_at")
_copy_aliases = copy_values(ALIASES, _ALIAS_COLUMNS, _alias_row)


def _write_changed(rows: list[ParticipantRow]) -> None:
    _update_changed(list({row.id: row for row in rows}.values()))  # a row changed twice is written once


def _write_created(rows: list[ParticipantRow]) -> None:
    _copy_participants(rows)
    _copy_aliases([{"alias": alias.alias, "participant_id": row.id, "created_at": alias.created_at}
                   for row in rows for alias in row.aliases])
    for row in rows:
        row.stored = True  # later changes in the batch are updates


@dataclass
class Known:
    """The participants a batch may match, by every key it matches on, kept up to date as the batch
    creates and changes them (a later item finds what an earlier one wrote); and what waits to be
    written (`write_pending`), in this order: changed stored rows first (a MID or an identity they
    give up may be taken by a new one), their new aliases, created rows and their aliases (COPY: an
    INSERT of many rows cost more in SQLAlchemy's parameter handling than in PostgreSQL), then
    every version row (with its event, through `versioning`)."""

    by_alias: dict[str, ParticipantRow] = field(default_factory=dict)
    by_identity: dict[Identity, ParticipantRow] = field(default_factory=dict)
    by_mid: dict[str, ParticipantRow] = field(default_factory=dict)
    changed: PendingRows[ParticipantRow] = field(default_factory=lambda: PendingRows(TABLE.name, _write_changed))
    new_aliases: PendingRows[dict[str, Any]] = field(default_factory=lambda: PendingRows(
        ALIASES.name, execute_many(insert(ALIASES), _alias_values)))
    created: PendingRows[ParticipantRow] = field(default_factory=lambda: PendingRows(TABLE.name, _write_created))
    versions: PendingRows[dict[str, Any]] = field(
        default_factory=lambda: versioning.pending_versions(ParticipantVersion))

    @property
    def writes(self) -> PendingWrites:
        return PendingWrites(self.changed, self.new_aliases, self.created, self.versions)

    def remember(self, participant: ParticipantRow) -> None:
        for alias in participant.aliases:
            self.by_alias[alias.alias] = participant
        identity = _matched_identity(participant)
        if identity is not None:
            self.by_identity[identity] = participant
        if participant.mid is not None:
            self.by_mid[participant.mid] = participant

    def forget(self, participant: ParticipantRow) -> None:
        """Before a change: drop the keys it may lose."""
        identity = _matched_identity(participant)
        if identity is not None and self.by_identity.get(identity) is participant:
            del self.by_identity[identity]
        if participant.mid is not None and self.by_mid.get(participant.mid) is participant:
            del self.by_mid[participant.mid]


def look_up(items: list[dict[str, Any]]) -> Known:
    """Every stored participant the items may match, locked (in id order: no deadlocks between
    batches), by id or alias, identity or MID in one query; then their aliases."""
    identities = {identity for identity in map(identity_of, items) if identity is not None}
    emails, first_names, last_names = (list(keys) for keys in zip(*identities, strict=True)) if identities else ([], [], [])
    matched = db.session.execute(_LOOK_UP, {
        "ids": list({item["participant_id"] for item in items}),
        "mids": list({item["mid"] for item in items if item.get("mid") is not None}),
        "emails": emails, "first_names": first_names, "last_names": last_names})
    found = {row.id: ParticipantRow(**dict(zip(COLUMN_OF, row, strict=True)), stored=True) for row in matched}
    if found:
        for alias in db.session.execute(_ALIASES_OF, {"ids": list(found)}):
            found[alias.participant_id].aliases.append(AliasRow(alias.alias, alias.created_at))
    known = Known()
    for participant in found.values():
        known.remember(participant)
    return known


# Each key by its own index (arrays, not one bind parameter per value): one OR over all three
# made PostgreSQL test every row against every identity (a sequential scan of the table).
_LOOK_UP = text(f"""
SELECT {", ".join(COLUMN_OF.values())} FROM {TABLE.fullname} WHERE id IN (
    SELECT participant_id FROM {ALIASES.fullname} WHERE alias = ANY(CAST(:ids AS text[]))
    UNION
    SELECT stored.id FROM {TABLE.fullname} AS stored
    JOIN unnest(CAST(:emails AS text[]), CAST(:first_names AS text[]), CAST(:last_names AS text[]))
         AS sent(email, first_name, last_name)
      ON (stored.match_email, stored.match_first_name, stored.match_last_name)
       = (sent.email, sent.first_name, sent.last_name)
    UNION
    SELECT id FROM {TABLE.fullname} WHERE mid = ANY(CAST(:mids AS text[])))
ORDER BY id FOR UPDATE""")
_ALIASES_OF = text(f"""
SELECT alias, participant_id, created_at FROM {ALIASES.fullname}
WHERE participant_id = ANY(CAST(:ids AS text[])) ORDER BY created_at, alias""")


def receive_participant(data: dict[str, Any], *, provenance: Provenance, source: str, actor: str,
                        context: Known | None = None) -> tuple[ParticipantRow, str]:
    """One participant of a batch → (participant, `created` | `updated` | `unchanged`).
    With `context` (the batch's lookup) its writes wait for the batch's `write_pending`; alone,
    it looks up, writes in a savepoint and, meeting a racing batch's rows, looks again."""
    if context is not None:
        return _receive(data, context, provenance=provenance, source=source, actor=actor)
    for attempt in range(ATTEMPTS):
        known = look_up([data])
        try:
            with db.session.begin_nested():
                result = _receive(data, known, provenance=provenance, source=source, actor=actor)
                write_pending(known)
                return result
        except IntegrityError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _receive(data: dict[str, Any], known: Known, *, provenance: Provenance, source: str,
             actor: str) -> tuple[ParticipantRow, str]:
    identity = identity_of(data)
    participant = known.by_alias.get(data["participant_id"])
    if participant is None and identity is not None:
        participant = known.by_identity.get(identity)
    mid = data.get("mid")
    holder = known.by_mid.get(mid) if mid is not None else None
    if holder is not None and holder is not participant:
        raise MidConflict(f"this MID is held by participant {holder.id}", pointer="/mid", existing_id=holder.id)
    now = now_utc()
    if participant is None:
        sent: dict[str, Any] = {name: data.get(name) for name in (*IDENTITY_FIELDS, *PLAIN_FIELDS)}
        participant = ParticipantRow(id=data["participant_id"], created_at=now, updated_at=now,
                                     aliases=[AliasRow(data["participant_id"], now)], **sent)
        known.created.append(participant)
        action = "created"
    elif _update(participant, data, known, now):
        action = "updated"
    else:
        return participant, "unchanged"
    participant.batch_id, participant.source = provenance.batch_id, provenance.source
    # A new participant's identity is the item's: folded once.
    participant.match_email, participant.match_first_name, participant.match_last_name = (
        (identity if action == "created" else identity_of(participant)) or (None, None, None))
    known.remember(participant)
    known.versions.append(versioning.version_row(participant, _version_data(participant), source=source, actor=actor,
                                                 changed_at=now))
    return participant, action


def _update(participant: ParticipantRow, data: dict[str, Any], known: Known, now: datetime) -> bool:
    """Apply the item to a participant the batch knows; False (nothing done) when it changes nothing."""
    changes = _changes(participant, data)
    new_alias = data["participant_id"] not in {alias.alias for alias in participant.aliases}
    if not changes and not new_alias:
        return False
    _check_identity(participant, changes, known)
    known.forget(participant)
    for name, value in changes.items():
        setattr(participant, name, value)
    if new_alias:
        participant.aliases.append(AliasRow(data["participant_id"], now))
        if participant.stored:
            known.new_aliases.append({"alias": data["participant_id"], "participant_id": participant.id,
                                      "created_at": now})
    if participant.stored:
        known.changed.append(participant)
    participant.version += 1
    participant.updated_at = now
    return True


def _changes(participant: ParticipantRow, data: dict[str, Any]) -> dict[str, Any]:
    """What the item changes. A value not sent (or null) keeps what is known; a name or e-mail
    equal but for case and spacing keeps its stored spelling."""
    changes = {}
    for name in IDENTITY_FIELDS:
        value, stored = data.get(name), getattr(participant, name)
        if value is not None and value != stored and (stored is None or fold(value) != fold(stored)):
            changes[name] = value
    for name in PLAIN_FIELDS:
        value = data.get(name)
        if value is not None and value != getattr(participant, name):
            changes[name] = value
    return changes


def _check_identity(participant: ParticipantRow, changes: dict[str, Any], known: Known) -> None:
    if not any(name in changes for name in IDENTITY_FIELDS):
        return
    identity = identity_of({**{name: getattr(participant, name) for name in IDENTITY_FIELDS}, **changes})
    other = known.by_identity.get(identity) if identity is not None else None
    if other is not None and other is not participant:
        raise IdentityConflict(f"participant {other.id} has this first name, last name and e-mail",
                               pointer="/email", existing_id=other.id)


def write_pending(known: Known) -> None:
    """What the batch changed, one statement per table, in the order `Known` says."""
    known.writes.flush()


# ---- reads --------------------------------------------------------------------------------------

def get_participant(participant_id: str) -> Participant:
    """By its own id or an alias."""
    participant = db.session.scalars(select(Participant).join(ParticipantAlias).where(
        ParticipantAlias.alias == participant_id)).first()
    if participant is None:
        raise NotFound(f"no participant has the id or alias {participant_id}")
    return participant


def participant_history(participant_id: str) -> list[Any]:
    return versioning.history(ParticipantVersion, get_participant(participant_id).id)


def list_participants(filters: dict[str, Any], *, page: int, page_size: int) -> tuple[list[Participant], int]:
    query = select(Participant)
    if "mid" in filters:
        query = query.where(Participant.mid == filters["mid"])
    if "email" in filters:
        query = query.where(Participant.email == filters["email"].strip().lower())
    if "event_id" in filters:
        query = query.where(Participant.meta["eventId"].astext == filters["event_id"])
    return PARTICIPANTS.page(query, page=page, page_size=page_size)
