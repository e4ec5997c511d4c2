"""The therapist service layer: the only code that writes therapists.

REST views, batch requests and the folder importer call these functions with data loaded by
`TherapistSchema`. Nothing here commits: the caller's unit of work does.

Rules (SPEC §6.2, §7.2.3):
- *Same content* ignores `last_modified` and key order, and compares lists as sets; a write
  with the same content changes nothing and writes no version.
- *Latest wins*: a write that changes content but carries a `last_modified` older than or
  equal to the stored one is refused (`StaleUpdate`). A write without `last_modified` (a hand
  edit) is applied and keeps the stored source timestamp.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from datetime import datetime
from typing import Any, Collection, Iterable

from sqlalchemy import func, insert, select

from shared import versioning
from shared.db import reserve_ids, unique_or_duplicate
from shared.errors import StaleUpdate
from shared.extensions import db
from shared.schemas import now_utc
from therapist_service.models import GROUPS, Therapist, TherapistVersion

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

    return {"id": get("id"), "external_id": get("external_id"), "last_modified": iso(get("last_modified")),
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
    if "external_id" in filters:
        query = query.where(Therapist.external_id == filters["external_id"])
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


def import_fingerprints(external_ids: Iterable[str]) -> dict[str, tuple[str | None, bool]]:
    """`external_id → (import fingerprint, deleted?)` for the stored therapists among `external_ids`."""
    ids = list(external_ids)
    rows = db.session.execute(select(Therapist.external_id, Therapist.import_fingerprint,
                                     Therapist.deleted_at.is_not(None)).where(Therapist.external_id.in_(ids)))
    return {external_id: (fingerprint, deleted) for external_id, fingerprint, deleted in rows}


def find_by_external_ids(external_ids: Iterable[str]) -> dict[str, Therapist]:
    """Stored therapists (deleted ones too) by external id, in one query, locked for this unit of work."""
    ids = list(external_ids)
    if not ids:
        return {}
    rows = db.session.scalars(select(Therapist).where(Therapist.external_id.in_(ids)).with_for_update())
    return {t.external_id: t for t in rows}


# ---- writes ------------------------------------------------------------------------------------

def _record(therapist: Therapist, *, source: str, actor: str, now: datetime) -> None:
    versioning.add_version(TherapistVersion, therapist, representation(therapist),
                           source=source, actor=actor, changed_at=now)


def _external_id_guarded(external_id: str | None) -> Any:
    """A savepoint in which a taken `external_id` becomes `Duplicate(existing_id)`."""
    return unique_or_duplicate(
        EXTERNAL_ID_INDEX, lambda: db.session.scalar(select(Therapist.id).where(Therapist.external_id == external_id)),
        "a therapist with this external_id already exists")


def _apply(therapist: Therapist, data: dict[str, Any], fingerprint: str | None = None) -> None:
    therapist.import_fingerprint = fingerprint
    therapist.external_id = data.get("external_id")
    if data.get("last_modified") is not None:
        therapist.last_modified = data["last_modified"]
    for group in GROUPS:
        setattr(therapist, group, dict(data.get(group) or {}))


def flush_and_release() -> None:
    """Write what is pending and let go of the written therapists and versions (a long import
    would otherwise keep every one of them in memory until it commits)."""
    db.session.flush()
    for instance in list(db.session.identity_map.values()):
        if isinstance(instance, (Therapist, TherapistVersion)):
            db.session.expunge(instance)


def create_therapists(items: list[dict[str, Any]], *, source: str, actor: str, now: datetime | None = None,
                      fingerprints: list[str | None] | None = None) -> list[int]:
    """Create therapists and their first versions: one multi-row INSERT per table, no ORM objects.

    Nothing is guarded here: a taken `external_id` raises `IntegrityError` for the whole call, and
    the caller decides (`create_therapist` makes it a `Duplicate`; the importer redoes the file
    one therapist at a time).
    """
    if not items:
        return []
    now = now or now_utc()
    rows = [{"id": therapist_id, "version": 1, "created_at": now, "updated_at": now, "deleted_at": None,
             "external_id": data.get("external_id"), "last_modified": data.get("last_modified"),
             "import_fingerprint": fingerprint, **{group: dict(data.get(group) or {}) for group in GROUPS}}
            for therapist_id, data, fingerprint in zip(reserve_ids(ID_SEQUENCE, len(items)), items,
                                                       fingerprints or [None] * len(items))]
    db.session.execute(insert(Therapist), rows)
    versioning.add_versions(TherapistVersion, [
        {"record_id": row["id"], "version": 1, "changed_at": now, "source": source, "actor": actor,
         "data": representation(row), "deleted": False} for row in rows])
    return [row["id"] for row in rows]


def create_therapist(data: dict[str, Any], *, source: str, actor: str, now: datetime | None = None,
                     fingerprint: str | None = None) -> Therapist:
    """Create one therapist (`create_therapists` with one item); a taken `external_id` is a `Duplicate`."""
    with _external_id_guarded(data.get("external_id")):
        [therapist_id] = create_therapists([data], source=source, actor=actor, now=now, fingerprints=[fingerprint])
    return db.session.get(Therapist, therapist_id)


def update_therapist(therapist: Therapist, data: dict[str, Any], *, source: str, actor: str,
                     now: datetime | None = None, restore: bool = False,
                     stale_if_equal: bool = True, fingerprint: str | None = None) -> str:
    """Apply `data` to `therapist`: `UPDATED`, `UNCHANGED`, or `StaleUpdate` raised.

    `restore` also undoes a soft delete (a later `new`/`modified` scrape entry does).
    """
    revive = restore and therapist.deleted_at is not None
    if same_content(therapist, data) and not revive:
        if fingerprint is not None:
            therapist.import_fingerprint = fingerprint  # known unchanged: next time without loading
        return UNCHANGED
    if is_stale(therapist, data.get("last_modified"), strictly_older=not stale_if_equal):
        raise StaleUpdate(
            f"therapist {therapist.id}: last_modified {data['last_modified'].isoformat()} is not newer "
            f"than the stored {therapist.last_modified.isoformat()}")
    now = now or now_utc()
    bookkeeping = {"version": therapist.version + 1, "updated_at": now, "import_fingerprint": fingerprint,
                   **({"deleted_at": None} if revive else {})}
    new_key = data.get("external_id") != therapist.external_id  # only a new external_id can collide
    with _external_id_guarded(data.get("external_id")) if new_key else nullcontext():
        _apply(therapist, data)
        for name, value in bookkeeping.items():
            setattr(therapist, name, value)
        if new_key:
            db.session.flush()  # inside the savepoint: a clash is this write's `Duplicate`
    _record(therapist, source=source, actor=actor, now=now)
    return UPDATED


def soft_delete(therapist: Therapist, *, source: str, actor: str, now: datetime | None = None,
                last_modified: datetime | None = None) -> str:
    if therapist.deleted_at is not None:
        return UNCHANGED
    if is_stale(therapist, last_modified, strictly_older=True):
        raise StaleUpdate(f"therapist {therapist.id}: the deletion is older than the stored data")
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


def upsert_therapist(data: dict[str, Any], *, source: str, actor: str,
                     now: datetime | None = None) -> tuple[Therapist | None, str]:
    """A batch item: match on `external_id`, else create; latest `last_modified` wins.
    Returns the therapist and `created` / `updated` / `unchanged` / `ignored_stale`."""
    external_id = data.get("external_id")
    therapist = find_by_external_ids([external_id]).get(external_id) if external_id else None
    if therapist is None:
        return create_therapist(data, source=source, actor=actor, now=now), CREATED
    try:
        return therapist, update_therapist(therapist, data, source=source, actor=actor, now=now, restore=True)
    except StaleUpdate:
        return therapist, IGNORED_STALE
