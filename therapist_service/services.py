"""The therapist service layer: the only code that writes therapists.

REST views, batch requests and the folder importer call these functions with data loaded by
`TherapistSchema`; a batch item and a scrape file's entries go through the same `write_entries`,
the import's in bulk (`EntryScope.creates`). Nothing here commits: the caller's unit of work does.

Rules (SPEC §6.2, §7.2.3):
- *Same content* ignores `last_modified` and key order, and compares lists as sets; a write
  with the same content changes nothing and writes no version.
- *Latest wins*: a write that changes content but carries a `last_modified` older than or
  equal to the stored one is refused (`StaleUpdate`). A write without `last_modified` (a hand
  edit) is applied and keeps the stored source timestamp.
- *A changed scraper id* (§7.2.6): an upsert under an unknown `external_id` looks for the
  therapist by practice identity (`match_unknown_ids`, one query for all unknown ids) and, on
  one released match, takes it over (`take_over`) instead of creating a second record.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import func, or_, select

from shared import versioning
from shared.bulk import JsonText, PendingRows, PendingWrites, copy_lines, copy_value
from shared.db import any_text, reserve_ids, unique_or_duplicate
from shared.errors import DomainError, StaleUpdate
from shared.extensions import db
from shared.schemas import now_utc
from shared.text import fold
from therapist_service.models import GROUPS, Therapist, TherapistVersion

log = logging.getLogger(__name__)

EXTERNAL_ID_INDEX = "uq_therapists_external_id"
ID_SEQUENCE = f"{Therapist.__table__.schema}.therapists_id_seq"

# What an upsert did with one item; the importer and batch requests count these.
CREATED, UPDATED, UNCHANGED, DELETED, IGNORED_STALE = "created", "updated", "unchanged", "deleted", "ignored_stale"


def representation(therapist: Therapist | dict[str, Any]) -> dict[str, Any]:
    """What `TherapistSchema` dumps, built directly (a test checks the two agree), from a stored
    therapist or from the row `create_therapists` inserts: the import writes one per change."""
    get = therapist.get if isinstance(therapist, dict) else lambda name: getattr(therapist, name)

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {"id": get("id"), "external_id": get("external_id"),
            "previous_external_ids": list(get("previous_external_ids") or []),
            "last_modified": iso(get("last_modified")),
            "deleted_at": iso(get("deleted_at")), "version": get("version"),
            "created_at": iso(get("created_at")), "updated_at": iso(get("updated_at")),
            **{group: get(group) for group in GROUPS}}


def canonical(value: Any) -> Any:
    """A form in which equal content is equal: dicts by key, lists as sorted sets."""
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = {json.dumps(canonical(item), sort_keys=True, default=str) for item in value}
        return sorted(items)
    return value


def content_of(data: dict[str, Any]) -> dict[str, Any]:
    return {"external_id": data.get("external_id"), **{g: canonical(data.get(g) or {}) for g in GROUPS}}


def practice_identity(data: dict[str, Any]) -> str | None:
    """SPEC §7.2.6: first and last name, postcode, street and house number, folded, as one text
    (a JSON list: readable in psql, and no two different identities give the same text).
    None when a part is missing: a name without a full address identifies no practice."""
    basic_info, location = data.get("basic_info") or {}, data.get("location") or {}
    parts = [basic_info.get("first_name"), basic_info.get("last_name"), location.get("postcode"),
             location.get("street"), location.get("house_number")]
    texts = [part for part in parts if isinstance(part, str) and part.strip()]
    if len(texts) < len(parts):
        return None
    return json.dumps([fold(text) for text in texts], ensure_ascii=False)


def same_content(therapist: Therapist, data: dict[str, Any]) -> bool:
    return content_of({"external_id": therapist.external_id,
                       **{g: getattr(therapist, g) for g in GROUPS}}) == content_of(data)


def is_stale(therapist: Therapist, incoming: datetime | None, *, strictly_older: bool = False) -> bool:
    if incoming is None or therapist.last_modified is None:
        return False
    return incoming < therapist.last_modified if strictly_older else incoming <= therapist.last_modified


# ---- reads -------------------------------------------------------------------------------------

THERAPISTS = versioning.VersionedStore(Therapist, TherapistVersion, "therapist")


def get_therapist(therapist_id: int, *, for_update: bool = False, include_deleted: bool = False) -> Therapist:
    return THERAPISTS.get(therapist_id, for_update=for_update, include_deleted=include_deleted)


def get_therapist_as_of(therapist_id: int, at: datetime) -> dict[str, Any]:
    return THERAPISTS.as_of(therapist_id, at)


def list_therapists(filters: dict[str, Any], *, page: int, page_size: int) -> tuple[list[Therapist], int]:
    query = select(Therapist)
    if not filters.get("include_deleted"):
        query = query.where(Therapist.deleted_at.is_(None))
    if "external_id" in filters:  # a previous id finds the therapist too (§7.2.6)
        query = query.where(or_(Therapist.external_id == filters["external_id"],
                                Therapist.previous_external_ids.contains([filters["external_id"]])))
    if "postcode" in filters:
        query = query.where(Therapist.location["postcode"].astext == filters["postcode"])
    if "city" in filters:
        query = query.where(func.lower(Therapist.location["city"].astext) == filters["city"].strip().lower())
    if "last_name" in filters:
        query = query.where(
            func.lower(Therapist.basic_info["last_name"].astext) == filters["last_name"].strip().lower())
    if "therapy_method" in filters:
        query = query.where(Therapist.professional_info["therapy_methods"].contains([filters["therapy_method"]]))
    return THERAPISTS.page(query, page=page, page_size=page_size)


def therapist_history(therapist_id: int) -> list[TherapistVersion]:
    return THERAPISTS.history(therapist_id)


def identities_in_use(identities: Collection[str]) -> bool:
    """Whether any stored therapist (deleted ones too) has one of these practice identities."""
    if not identities:
        return False
    return db.session.scalar(select(Therapist.id).where(Therapist.practice_identity == any_text(identities))
                             .limit(1)) is not None


def import_fingerprints(external_ids: Iterable[str]) -> dict[str, tuple[str | None, bool]]:
    """`external_id → (import fingerprint, deleted?)` for the stored therapists among `external_ids`."""
    ids = list(external_ids)
    rows = db.session.execute(select(Therapist.external_id, Therapist.import_fingerprint,
                                     Therapist.deleted_at.is_not(None)).where(Therapist.external_id == any_text(ids)))
    return {external_id: (fingerprint, deleted) for external_id, fingerprint, deleted in rows
            if external_id is not None}


def find_by_external_ids(external_ids: Iterable[str]) -> dict[str, Therapist]:
    """Stored therapists (deleted ones too) by external id, in one query, locked for this unit of work."""
    ids = list(external_ids)
    if not ids:
        return {}
    rows = db.session.scalars(select(Therapist).where(Therapist.external_id == any_text(ids)).with_for_update())
    return {t.external_id: t for t in rows if t.external_id is not None}


@dataclass(frozen=True)
class IdentityMatch:
    """What SPEC §7.2.6 makes of an entry under an unknown external id that has stored look-alikes:
    either the one therapist it is under a new id, or the ids (ours) of possible duplicates."""

    therapist: Therapist | None = None
    possible_duplicates: tuple[Therapist, ...] = ()


def match_unknown_ids(entries: Iterable[dict[str, Any]], *, marked_deleted: Collection[str] = (),
                      kept: Collection[str] = ()) -> dict[str, IdentityMatch]:
    """`external_id → IdentityMatch` for the entries (all under unknown external ids) whose practice
    identity a stored therapist has; one query for all of them, the candidates locked for this unit
    of work. Entries without a match are left out: they are new therapists.

    A stored therapist is *released* — free to be taken over — when it is soft-deleted or its
    external id is in `marked_deleted` (the same file marks it deleted), and its external id is
    not in `kept` (the same file keeps it under its own id). One released match for one entry is
    a take-over; anything else (several matches, a live one, two entries for one match) is left
    to people as `possible_duplicates`.
    """
    claims: dict[str, list[str]] = {}
    for data in entries:
        identity = practice_identity(data)
        if identity is not None and data.get("external_id"):
            claims.setdefault(identity, []).append(data["external_id"])
    if not claims:
        return {}
    stored: dict[str | None, list[Therapist]] = {}
    for therapist in db.session.scalars(select(Therapist).where(Therapist.practice_identity == any_text(claims))
                                        .order_by(Therapist.id).with_for_update()):
        stored.setdefault(therapist.practice_identity, []).append(therapist)

    def released(therapist: Therapist) -> bool:
        return ((therapist.deleted_at is not None or therapist.external_id in marked_deleted)
                and therapist.external_id not in kept)

    matches: dict[str, IdentityMatch] = {}
    for identity, external_ids in claims.items():
        candidates = stored.get(identity, [])
        if len(candidates) == 1 and len(external_ids) == 1 and released(candidates[0]):
            matches[external_ids[0]] = IdentityMatch(therapist=candidates[0])
        elif candidates:
            matches.update((external_id, IdentityMatch(possible_duplicates=tuple(candidates)))
                           for external_id in external_ids)
    return matches


def describe_id_change(previous_external_id: str | None, therapist: Therapist) -> str:
    """The `id-changed` warning: both ids and ours, never a name (on-call reads import records)."""
    return (f"external id {previous_external_id or '(none)'} is now {therapist.external_id}: same practice "
            f"identity; therapist {therapist.id} keeps its id (undo: PATCH its external_id back)")


def describe_possible_duplicate(external_id: str, candidates: Collection[Therapist]) -> str:
    """The `possible-duplicate` warning: the entry's id and the candidates' ids, never a name."""
    named = ", ".join(f"therapist {t.id} (external id {t.external_id or '(none)'}"
                      f"{', deleted' if t.deleted_at is not None else ''})" for t in candidates)
    return (f"external id {external_id} is unknown and its practice identity equals {named}; "
            f"created as a new therapist: merging live records is left to people")


# ---- writes ------------------------------------------------------------------------------------

def _record(therapist: Therapist, *, source: str, actor: str, now: datetime) -> None:
    versioning.add_version(TherapistVersion, therapist, representation(therapist),
                           source=source, actor=actor, changed_at=now)


def _external_id_guarded(external_id: str | None) -> Any:
    """A savepoint in which a taken `external_id` becomes `Duplicate(existing_id)`."""
    return unique_or_duplicate(
        EXTERNAL_ID_INDEX, lambda: db.session.scalar(select(Therapist.id).where(Therapist.external_id == external_id)),
        "a therapist with this external_id already exists")


def stored_values(data: dict[str, Any]) -> dict[str, Any]:
    """What loaded therapist data becomes in its row, by column: the one mapping from data to a
    therapist that every write uses (`_apply` on a stored one, `PreparedTherapist` for a new one's
    COPY line; `representation` reads those columns back)."""
    return {"external_id": data.get("external_id"), "last_modified": data.get("last_modified"),
            "practice_identity": practice_identity(data), **{group: dict(data.get(group) or {}) for group in GROUPS}}


def _apply(therapist: Therapist, data: dict[str, Any]) -> None:
    for column, value in stored_values(data).items():
        if column != "last_modified" or value is not None:  # a hand edit keeps the source's timestamp
            setattr(therapist, column, value)


def flush_and_release(keep: Iterable[Therapist] = ()) -> None:
    """Write what is pending and let go of the written therapists and versions (a long import
    would otherwise keep every one of them in memory until it commits). `keep`: therapists loaded
    for writes still to come (a released one would no longer be written)."""
    db.session.flush()
    kept = {id(therapist) for therapist in keep}
    for instance in list(db.session.identity_map.values()):
        if isinstance(instance, (Therapist, TherapistVersion)) and id(instance) not in kept:
            db.session.expunge(instance)


_COPIED_VALUES = ("external_id", "last_modified", "practice_identity")  # then the groups, as JSON text
_CREATED_COLUMNS = ("id", "version", "created_at", "updated_at", "deleted_at", "import_fingerprint", *_COPIED_VALUES,
                    *GROUPS, "previous_external_ids")


class PreparedTherapist(dict[str, Any]):
    """Loaded therapist data that also carries its `stored_values` as text: its row's columns from
    `external_id` on (COPY format) and each group as JSON — serialised once, for the row, its
    version and its event alike. An import prepares them where it validates (in a worker
    process), so the process that writes only joins text."""

    def __init__(self, data: dict[str, Any]):
        super().__init__(data)
        values = stored_values(data)
        # msgspec: loaded data is plain JSON (the schema refused what UTF-8 cannot hold), written compactly
        self.groups = tuple(msgspec.json.encode(values[group]) for group in GROUPS)
        self.row_tail = "\t".join([*(copy_value(values[column]) for column in _COPIED_VALUES),
                                   *(copy_value(text.decode()) for text in self.groups), "{}"])

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent from a worker process as msgpack and the texts: a third of what pickling the dict
        costs both processes (about 20 µs a therapist). What msgpack cannot hold (an integer
        beyond 64 bits, which the database then refuses) goes as a pickled dict."""
        try:
            packed: bytes | dict[str, Any] = _MSGPACK_ENCODER.encode(dict(self))
        except (TypeError, OverflowError, ValueError):
            packed = dict(self)
        return (_unpickle_prepared, (packed, self.row_tail, self.groups))

    def representation(self, therapist_id: int, now: datetime) -> JsonText:
        """The `representation` of the therapist created from it, as JSON text (its groups as
        serialised already)."""
        created = {"id": therapist_id, "external_id": self.get("external_id"), "last_modified": self.get("last_modified"),
                   "version": 1, "created_at": now, "updated_at": now,
                   **dict(zip(GROUPS, map(msgspec.Raw, self.groups), strict=True))}
        return JsonText(msgspec.json.encode(representation(created)).decode())


_MSGPACK_ENCODER = msgspec.msgpack.Encoder()
_MSGPACK_DECODER = msgspec.msgpack.Decoder()  # datetimes come back as the aware UTC ones sent


def _unpickle_prepared(packed: bytes | dict[str, Any], row_tail: str, groups: tuple[bytes, ...]) -> PreparedTherapist:
    prepared = PreparedTherapist.__new__(PreparedTherapist)
    dict.update(prepared, packed if isinstance(packed, dict) else _MSGPACK_DECODER.decode(packed))
    prepared.row_tail, prepared.groups = row_tail, groups
    return prepared


@dataclass(slots=True)
class NewTherapist:
    """A therapist `TherapistCreates` will create, and who creates it."""

    data: PreparedTherapist
    fingerprint: str | None
    source: str
    actor: str


class TherapistCreates(PendingWrites):
    """New therapists written together (`shared.bulk.PendingWrites`): one COPY of their rows, then
    one of their first versions (with their events); no ORM objects. Nothing is guarded: a taken
    `external_id` raises `IntegrityError` for the whole flush, and the caller decides
    (`create_therapist` makes it a `Duplicate`; the importer redoes the file one therapist at a
    time). `held`: written only when its owner flushes it, not by `write_entries` (several
    files' new therapists in one COPY). `ids`: those created so far, in order."""

    def __init__(self, *, held: bool = False, now: datetime | None = None) -> None:
        self.held, self.now, self.ids = held, now, list[int]()
        self.created: PendingRows[NewTherapist] = PendingRows(Therapist.__tablename__, self._copy)
        self.versions = versioning.pending_versions(TherapistVersion)
        super().__init__(self.created, self.versions)

    def add(self, data: dict[str, Any], *, fingerprint: str | None, source: str, actor: str) -> None:
        prepared = data if isinstance(data, PreparedTherapist) else PreparedTherapist(data)
        self.created.append(NewTherapist(prepared, fingerprint, source, actor))

    def _copy(self, rows: list[NewTherapist]) -> None:
        now = self.now or now_utc()
        stamp = now.isoformat()
        ids = reserve_ids(ID_SEQUENCE, len(rows))
        copy_lines(Therapist.__table__, _CREATED_COLUMNS, (
            f"{therapist_id}\t1\t{stamp}\t{stamp}\t\\N\t{copy_value(row.fingerprint)}\t{row.data.row_tail}\n"
            for therapist_id, row in zip(ids, rows, strict=True)))
        for therapist_id, row in zip(ids, rows, strict=True):
            self.versions.append({"record_id": therapist_id, "version": 1, "changed_at": now, "source": row.source,
                                  "actor": row.actor, "data": row.data.representation(therapist_id, now),
                                  "deleted": False})
        self.ids.extend(ids)


def create_therapists(items: list[dict[str, Any]], *, source: str, actor: str, now: datetime | None = None,
                      fingerprints: list[str | None] | None = None) -> list[int]:
    """Create therapists and their first versions at once (`TherapistCreates`); their ids."""
    creates = TherapistCreates(now=now)
    for data, fingerprint in zip(items, fingerprints or [None] * len(items), strict=True):
        creates.add(data, fingerprint=fingerprint, source=source, actor=actor)
    creates.flush()
    return creates.ids


def create_therapist(data: dict[str, Any], *, source: str, actor: str, now: datetime | None = None,
                     fingerprint: str | None = None) -> Therapist:
    """Create one therapist (`create_therapists` with one item); a taken `external_id` is a `Duplicate`."""
    with _external_id_guarded(data.get("external_id")):
        [therapist_id] = create_therapists([data], source=source, actor=actor, now=now, fingerprints=[fingerprint])
    return db.session.get_one(Therapist, therapist_id)


def update_therapist(therapist: Therapist, data: dict[str, Any], *, source: str, actor: str,
                     now: datetime | None = None, restore: bool = False,
                     stale_if_equal: bool = True, fingerprint: str | None = None,
                     keep_previous_id: bool = False) -> str:
    """Apply `data` to `therapist`: `UPDATED`, `UNCHANGED`, or `StaleUpdate` raised.

    `restore` also undoes a soft delete (a later `new`/`modified` scrape entry does).
    `keep_previous_id` (a take-over, §7.2.6) adds the replaced external id to
    `previous_external_ids`. Whatever the entry point, an external id that becomes current again
    leaves that list: so a `PATCH` giving a wrongly taken-over therapist its old id back undoes the
    take-over's record of it.
    """
    revive = restore and therapist.deleted_at is not None
    if same_content(therapist, data) and not revive:
        if fingerprint is not None:
            therapist.import_fingerprint = fingerprint  # known unchanged: next time without loading
        return UNCHANGED
    if is_stale(therapist, data.get("last_modified"), strictly_older=not stale_if_equal):
        assert therapist.last_modified is not None  # only a stored time makes a write stale
        raise StaleUpdate(
            f"therapist {therapist.id}: last_modified {data['last_modified'].isoformat()} is not newer "
            f"than the stored {therapist.last_modified.isoformat()}")
    now = now or now_utc()
    new_key = data.get("external_id") != therapist.external_id  # only a new external_id can collide
    previous = [i for i in therapist.previous_external_ids if i != data.get("external_id")]
    if new_key and keep_previous_id and therapist.external_id is not None:
        previous.append(therapist.external_id)
    bookkeeping = {"version": therapist.version + 1, "updated_at": now, "import_fingerprint": fingerprint,
                   "previous_external_ids": previous, **({"deleted_at": None} if revive else {})}
    with _external_id_guarded(data.get("external_id")) if new_key else nullcontext():
        _apply(therapist, data)
        for name, value in bookkeeping.items():
            setattr(therapist, name, value)
        if new_key:
            db.session.flush()  # inside the savepoint: a clash is this write's `Duplicate`
    _record(therapist, source=source, actor=actor, now=now)
    return UPDATED


def take_over(therapist: Therapist, data: dict[str, Any], *, source: str, actor: str, now: datetime | None = None,
              stale_if_equal: bool = True, fingerprint: str | None = None) -> str:
    """SPEC §7.2.6: `data`, under a new external id, is `therapist` (found by `match_unknown_ids`).
    It keeps our id, takes the new external id, keeps the old one in `previous_external_ids` and is
    restored if deleted: one version, `UPDATED` — or `StaleUpdate` raised, as any update."""
    return update_therapist(therapist, data, source=source, actor=actor, now=now, restore=True,
                            stale_if_equal=stale_if_equal, fingerprint=fingerprint, keep_previous_id=True)


def soft_delete(therapist: Therapist, *, source: str, actor: str, now: datetime | None = None,
                last_modified: datetime | None = None, fingerprint: str | None = None) -> str:
    """`fingerprint`: of the scrape entry that deletes it (an import), remembered even when it was
    deleted already, so the same entry is known next time without being loaded."""
    if therapist.deleted_at is None and is_stale(therapist, last_modified, strictly_older=True):
        raise StaleUpdate(f"therapist {therapist.id}: the deletion is older than the stored data")
    if fingerprint is not None:
        therapist.import_fingerprint = fingerprint
    if therapist.deleted_at is not None:
        return UNCHANGED
    now = now or now_utc()
    therapist.deleted_at = now
    therapist.updated_at = now
    if last_modified is not None:
        therapist.last_modified = last_modified
    therapist.version += 1
    _record(therapist, source=source, actor=actor, now=now)
    return DELETED


def replace_therapist(therapist_id: int, data: dict[str, Any], *, expected_versions: Collection[int] | None = None,
                      source: str, actor: str, now: datetime | None = None) -> Therapist:
    therapist = get_therapist(therapist_id, for_update=True)
    THERAPISTS.check_version(therapist, expected_versions)
    update_therapist(therapist, data, source=source, actor=actor, now=now)
    return therapist


def patch_therapist(therapist_id: int, changes: dict[str, Any], *, expected_versions: Collection[int] | None = None,
                    source: str, actor: str, now: datetime | None = None) -> Therapist:
    """Apply the fields present in `changes`; a group in `changes` is merged key by key."""
    therapist = get_therapist(therapist_id, for_update=True)
    THERAPISTS.check_version(therapist, expected_versions)
    merged: dict[str, Any] = {"external_id": therapist.external_id, "last_modified": None}
    for group in GROUPS:
        merged[group] = {**getattr(therapist, group), **(changes.get(group) or {})}
    if "external_id" in changes:
        merged["external_id"] = changes["external_id"]
    merged["last_modified"] = changes.get("last_modified")
    update_therapist(therapist, merged, source=source, actor=actor, now=now)
    return therapist


def delete_therapist(therapist_id: int, *, expected_versions: Collection[int] | None = None,
                     source: str, actor: str, now: datetime | None = None) -> Therapist:
    therapist = get_therapist(therapist_id, for_update=True)
    THERAPISTS.check_version(therapist, expected_versions)
    soft_delete(therapist, source=source, actor=actor, now=now)
    return therapist


# ---- entries: one therapist at a time or a file's worth, the same rules --------------------------

FLUSH_EVERY = 2000  # a bulk run writes its new therapists and lets go of its written ones this often
FAILED = "failed"  # an entry's action when a rule refused it (`EntryResult.error`)
_LOGGED = {"possible-duplicate": (logging.WARNING, "possible duplicate: %s"), "id-changed": (logging.INFO, "id changed: %s")}


@dataclass(slots=True)  # not frozen: made once a therapist, frozen ones cost 1 µs more each
class Entry:
    """One therapist to write: its loaded data, what its source says happened to it (SPEC §7.2.3:
    `new`, `modified`, `unchanged` or `deleted`; a batch item is `modified`), and the fingerprint
    of the scrape entry it came from (an import's, to know it unchanged next time)."""

    data: dict[str, Any]
    status: str = "modified"
    fingerprint: str | None = None

    @property
    def external_id(self) -> str | None:
        return self.data.get("external_id")


@dataclass(slots=True)
class EntryResult:
    """What `write_entries` did with an entry: its action (`CREATED` … or `FAILED` with the
    `error`), the therapist when it is loaded, and warnings as `(kind, text)`, ids only."""

    action: str
    therapist: Therapist | None = None
    warnings: tuple[tuple[str, str], ...] = ()
    error: DomainError | None = None


@dataclass(frozen=True)
class EntryScope:
    """What a run of entries knows beyond them. `statuses`: what the whole file says of each id it
    names (§7.2.6: which stored therapists it releases or keeps). `known`: the ids stored when the
    file was read, when none of its new entries' practice identities is stored — only these are
    looked up, and nothing by identity (a therapist created meanwhile under another id then clashes
    on `external_id`). `creates`: new therapists go there, written `FLUSH_EVERY` at a time with the
    run's other writes, and the written ones let go of (an import); without, each is created in a
    savepoint of its own and a taken `external_id` is that entry's error."""

    statuses: Mapping[str, Any] = field(default_factory=dict)
    known: Collection[str] | None = None
    creates: TherapistCreates | None = None


def write_entries(entries: Sequence[Entry], *, source: str, actor: str, scope: EntryScope = EntryScope(),
                  now: datetime | None = None) -> Iterator[EntryResult]:
    """SPEC §6.2, §7.2.3 and §7.2.6 for each entry, in order, as REST's batch and the folder
    import use them: stored therapists looked up by external id, the others by practice identity,
    in one query each; then created, updated, taken over or deleted. A refused entry is a result
    (`FAILED`), not an exception: the others are written all the same."""
    existing = find_by_external_ids(entry.external_id for entry in entries if entry.external_id is not None
                                    and (scope.known is None or entry.external_id in scope.known))
    matches = _identity_matches(entries, existing, scope)
    taken_over = {m.therapist.external_id: m.therapist for m in matches.values() if m.therapist is not None}
    write = _Write(source, actor, now, scope.creates)
    for position, entry in enumerate(entries, start=1):
        therapist = existing.pop(entry.external_id, None) if entry.external_id is not None else None
        match = matches.get(entry.external_id) if therapist is None and entry.external_id is not None else None
        yield write.entry(entry, therapist, match, taken_over)
        if scope.creates is not None and (position % FLUSH_EVERY == 0 or position == len(entries)):
            if not scope.creates.held:
                scope.creates.flush()
            flush_and_release(keep=[*existing.values(), *taken_over.values()])


def _identity_matches(entries: Sequence[Entry], existing: dict[str, Therapist],
                      scope: EntryScope) -> dict[str, IdentityMatch]:
    unknown = [entry.data for entry in entries if entry.status != "deleted" and entry.external_id not in existing]
    if not unknown or scope.known is not None:
        return {}
    return match_unknown_ids(
        unknown, marked_deleted={i for i, status in scope.statuses.items() if status == "deleted"},
        kept={i for i, status in scope.statuses.items() if status in ("new", "modified", "unchanged")})


@dataclass(frozen=True)
class _Write:
    """Who writes a run of entries, and where its new therapists go (`EntryScope.creates`)."""

    source: str
    actor: str
    now: datetime | None
    creates: TherapistCreates | None

    def entry(self, entry: Entry, therapist: Therapist | None, match: IdentityMatch | None,
              taken_over: dict[str | None, Therapist]) -> EntryResult:
        try:
            result = self._apply(entry, therapist, match, taken_over)
        except DomainError as error:
            return EntryResult(FAILED, error=error)
        if match is not None and match.therapist is None:
            assert entry.external_id is not None  # only an entry with one is matched
            duplicate = describe_possible_duplicate(entry.external_id, match.possible_duplicates)
            result = replace(result, warnings=(*result.warnings, ("possible-duplicate", duplicate)))
        return result

    def _apply(self, entry: Entry, therapist: Therapist | None, match: IdentityMatch | None,
               taken_over: dict[str | None, Therapist]) -> EntryResult:
        if entry.status == "deleted" and entry.external_id in taken_over:
            return EntryResult(UNCHANGED, taken_over[entry.external_id])  # it lives on under its new id
        if match is not None and match.therapist is not None:
            return self._take_over(entry, match.therapist)
        if therapist is None and entry.status != "deleted":
            return EntryResult(CREATED, self._create(entry))
        if therapist is None:
            return EntryResult(UNCHANGED, warnings=(("not-found", "marked deleted but not known here; nothing to delete"),))
        return self._update(entry, therapist)

    def _create(self, entry: Entry) -> Therapist | None:
        if self.creates is None:
            return create_therapist(entry.data, source=self.source, actor=self.actor, now=self.now,
                                    fingerprint=entry.fingerprint)
        self.creates.add(entry.data, fingerprint=entry.fingerprint, source=self.source, actor=self.actor)
        return None

    def _take_over(self, entry: Entry, therapist: Therapist) -> EntryResult:
        """SPEC §7.2.6: the entry is `therapist` under a new id; the `id-changed` warning names
        both ids and ours, never a name."""
        previous_external_id = therapist.external_id
        try:
            action = take_over(therapist, entry.data, stale_if_equal=entry.status != "unchanged", source=self.source,
                               actor=self.actor, now=self.now, fingerprint=entry.fingerprint)
        except StaleUpdate:
            return EntryResult(IGNORED_STALE, therapist)
        return EntryResult(action, therapist, (("id-changed", describe_id_change(previous_external_id, therapist)),))

    def _update(self, entry: Entry, therapist: Therapist) -> EntryResult:
        """SPEC §7.2.3 for a therapist we have: deleted, compared (`unchanged`), or updated."""
        write: dict[str, Any] = {"source": self.source, "actor": self.actor, "now": self.now,
                                 "fingerprint": entry.fingerprint}
        try:
            if entry.status == "deleted":
                return EntryResult(soft_delete(therapist, last_modified=entry.data.get("last_modified"), **write),
                                   therapist)
            if entry.status == "unchanged":
                action = update_therapist(therapist, entry.data, stale_if_equal=False, **write)
                differed = ("content-differs", "marked unchanged, but differed from the stored record; updated")
                return EntryResult(action, therapist, (differed,) if action == UPDATED else ())
            return EntryResult(update_therapist(therapist, entry.data, restore=True, **write), therapist)
        except StaleUpdate:
            return EntryResult(IGNORED_STALE, therapist)


def upsert_therapist(data: dict[str, Any], *, source: str, actor: str,
                     now: datetime | None = None) -> tuple[Therapist | None, str]:
    """A batch item (`write_entries` with one `modified` entry): match on `external_id`, else on
    practice identity (§7.2.6: a released therapist is taken over), else create; latest
    `last_modified` wins. Returns the therapist and `created` / `updated` / `unchanged` /
    `ignored_stale`; a refused item raises its `DomainError`. A batch answer has no warnings: the
    log keeps them (ids only)."""
    [result] = write_entries([Entry(data)], source=source, actor=actor, now=now)
    if result.error is not None:
        raise result.error
    for kind, text in result.warnings:
        level, message = _LOGGED[kind]
        log.log(level, message, text)
    return result.therapist, result.action
