"""The participant service layer: the only code that writes participants (SPEC §6.6).

Identity, per item: (1) a participant known by the item's `participantId` (its own id or an
alias); (2) else, with first name, last name and e-mail all sent, the participant with the same
three, folded as the patient duplicate rule folds them — updated in place, the incoming id becomes
an alias; (3) else a new participant. The database holds the rules (ids and aliases one primary
key, a unique MID, a unique identity), so racing batches cannot create one person twice.
Nothing here commits: the batch's unit of work does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import or_, select, tuple_
from sqlalchemy.exc import IntegrityError

from shared import versioning
from shared.batch import BatchAdapter, IdempotencyStore, Outcome, run_batch
from shared.errors import Conflict, NotFound
from shared.extensions import db
from shared.schemas import now_utc
from shared.text import fold
from therapist_service.models import IdempotencyKey
from therapist_service.participants.models import Participant, ParticipantAlias, ParticipantVersion
from therapist_service.participants.schemas import ParticipantItemSchema, ParticipantSchema

PARTICIPANTS = versioning.VersionedStore(Participant, ParticipantVersion, "participant")
IDENTITY_FIELDS = ("first_name", "last_name", "email")  # compared folded: another case is no change
PLAIN_FIELDS = ("phone", "username", "attendance_status", "meta")
CREATE_ATTEMPTS = 3  # a create that meets a racing one looks again (it then finds the other's)

_representation = ParticipantSchema()
_item_schema = ParticipantItemSchema()


class MidConflict(Conflict):
    type, title = "mid-conflict", "MID held by another participant"


class IdentityConflict(Conflict):
    type, title = "identity-conflict", "Identity held by another participant"


def representation(participant: Participant) -> dict[str, Any]:
    return _representation.dump(participant)


Identity = tuple[str, str, str]


def identity_of(values: dict[str, Any]) -> Identity | None:
    """The folded (e-mail, first name, last name), or None unless all three are there."""
    parts = [values.get(name) for name in ("email", "first_name", "last_name")]
    if not all(parts):
        return None
    email, first_name, last_name = (fold(part) for part in parts)
    return email, first_name, last_name


# ---- the batch ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Provenance:
    """Who sent the batch: stored on every participant the batch writes."""

    batch_id: str | None
    source: str | None


def receive_batch(body: dict[str, Any], *, actor: str, key: str | None, keys: IdempotencyStore, path: str,
                  max_items: int) -> Outcome:
    """`POST /api/appointments/participants`: every item in one transaction, through the shared
    batch runner (its idempotency keys, its per-item results, its 422 when any item fails)."""
    provenance = Provenance(body.get("batch_id"), body.get("source"))
    adapter = BatchAdapter(item_schema=_item_schema, upsert=partial(receive_participant, provenance=provenance),
                           delete=None, key_model=IdempotencyKey, prepare=look_up)
    return run_batch(adapter, body["participants"], mode="transaction", dry_run=False, actor=actor, key=key,
                     keys=keys, path=path, body=body, max_items=max_items, items_pointer="/participants")


@dataclass
class Known:
    """The participants a batch may match, by every key it matches on; kept up to date as the
    batch creates and changes them, so a later item finds what an earlier one wrote."""

    by_alias: dict[str, Participant] = field(default_factory=dict)
    by_identity: dict[Identity, Participant] = field(default_factory=dict)
    by_mid: dict[str, Participant] = field(default_factory=dict)

    def remember(self, participant: Participant) -> None:
        for alias in participant.aliases:
            self.by_alias[alias.alias] = participant
        identity = identity_of(_stored_identity(participant))
        if identity is not None:
            self.by_identity[identity] = participant
        if participant.mid is not None:
            self.by_mid[participant.mid] = participant

    def forget(self, participant: Participant) -> None:
        """Before a change: drop the keys it may lose."""
        identity = identity_of(_stored_identity(participant))
        if identity is not None and self.by_identity.get(identity) is participant:
            del self.by_identity[identity]
        if participant.mid is not None and self.by_mid.get(participant.mid) is participant:
            del self.by_mid[participant.mid]


def look_up(items: list[dict[str, Any]]) -> Known:
    """Every stored participant the items may match, locked (in id order: no deadlocks between
    batches), in three lookups folded into one query."""
    ids = {item["participant_id"] for item in items}
    identities = {identity for identity in map(identity_of, items) if identity is not None}
    mids = {item["mid"] for item in items if item.get("mid") is not None}
    matches = [Participant.id.in_(select(ParticipantAlias.participant_id).where(ParticipantAlias.alias.in_(ids)))]
    if identities:
        matches.append(tuple_(Participant.match_email, Participant.match_first_name,
                              Participant.match_last_name).in_(identities))
    if mids:
        matches.append(Participant.mid.in_(mids))
    known = Known()
    for participant in db.session.scalars(select(Participant).where(or_(*matches))
                                          .order_by(Participant.id).with_for_update(of=Participant)):
        known.remember(participant)
    return known


def receive_participant(data: dict[str, Any], *, provenance: Provenance, source: str, actor: str,
                        context: Known | None = None) -> tuple[Participant, str]:
    """One participant of a batch → (participant, `created` | `updated` | `unchanged`).
    With `context` (the batch's bulk lookup) it writes nothing to the database until the batch
    flushes; without, it looks up alone and creates in a savepoint, looking again after a clash."""
    if context is not None:
        return _receive(data, context, provenance=provenance, source=source, actor=actor)
    for attempt in range(CREATE_ATTEMPTS):
        known = look_up([data])
        try:
            with db.session.begin_nested():
                result = _receive(data, known, provenance=provenance, source=source, actor=actor)
                db.session.flush()
                return result
        except IntegrityError:
            if attempt == CREATE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _receive(data: dict[str, Any], known: Known, *, provenance: Provenance, source: str,
             actor: str) -> tuple[Participant, str]:
    identity = identity_of(data)
    participant = known.by_alias.get(data["participant_id"])
    if participant is None and identity is not None:
        participant = known.by_identity.get(identity)
    mid = data.get("mid")
    holder = known.by_mid.get(mid) if mid is not None else None
    if holder is not None and holder is not participant:
        raise MidConflict(f"this MID is held by participant {holder.id}", pointer="/mid", existing_id=holder.id)
    if participant is None:
        return _create(data, known, provenance=provenance, source=source, actor=actor), "created"
    return _update(participant, data, known, provenance=provenance, source=source, actor=actor)


def _create(data: dict[str, Any], known: Known, *, provenance: Provenance, source: str, actor: str) -> Participant:
    now = now_utc()
    participant = Participant(
        id=data["participant_id"], **{name: data.get(name) for name in (*IDENTITY_FIELDS, *PLAIN_FIELDS)},
        mid=data.get("mid"), batch_id=provenance.batch_id, source=provenance.source, version=1,
        created_at=now, updated_at=now, deleted_at=None,
        aliases=[ParticipantAlias(alias=data["participant_id"], created_at=now)])
    _set_match_keys(participant)
    db.session.add(participant)
    known.remember(participant)
    _add_version(participant, source=source, actor=actor, changed_at=now)
    return participant


def _update(participant: Participant, data: dict[str, Any], known: Known, *, provenance: Provenance,
            source: str, actor: str) -> tuple[Participant, str]:
    """Apply what the item says. A value not sent (or null) keeps what is known; a name or e-mail
    equal but for case and spacing keeps its stored spelling; a new id becomes an alias."""
    changes: dict[str, Any] = {}
    for name in IDENTITY_FIELDS:
        value, stored = data.get(name), getattr(participant, name)
        if value is not None and (stored is None or fold(value) != fold(stored)):
            changes[name] = value
    for name in (*PLAIN_FIELDS, "mid"):
        value = data.get(name)
        if value is not None and value != getattr(participant, name):
            changes[name] = value
    new_alias = data["participant_id"] not in {alias.alias for alias in participant.aliases}
    if not changes and not new_alias:
        return participant, "unchanged"
    if any(name in changes for name in IDENTITY_FIELDS):
        identity = identity_of({**_stored_identity(participant), **changes})
        other = known.by_identity.get(identity) if identity is not None else None
        if other is not None and other is not participant:
            raise IdentityConflict(f"participant {other.id} has this first name, last name and e-mail",
                                   pointer="/email", existing_id=other.id)
    now = now_utc()
    known.forget(participant)
    for name, value in changes.items():
        setattr(participant, name, value)
    _set_match_keys(participant)
    if new_alias:
        participant.aliases.append(ParticipantAlias(alias=data["participant_id"], created_at=now))
    participant.batch_id, participant.source = provenance.batch_id, provenance.source
    participant.version += 1
    participant.updated_at = now
    known.remember(participant)
    _add_version(participant, source=source, actor=actor, changed_at=now)
    return participant, "updated"


def _stored_identity(participant: Participant) -> dict[str, Any]:
    return {name: getattr(participant, name) for name in IDENTITY_FIELDS}


def _set_match_keys(participant: Participant) -> None:
    identity = identity_of(_stored_identity(participant))
    participant.match_email, participant.match_first_name, participant.match_last_name = identity or (None,) * 3


def _add_version(participant: Participant, *, source: str, actor: str, changed_at: Any) -> None:
    versioning.add_version(ParticipantVersion, participant, representation(participant), source=source,
                           actor=actor, changed_at=changed_at)


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
