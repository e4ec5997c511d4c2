"""How a scrape file becomes therapist service calls (SPEC §7.2, §8.2).

Whole-file problems — not UTF-8, not JSON, truncated, the wrong shape, an item that is not an
object, the same id twice — fail the file and write nothing. A therapist that fails validation
is reported with its index and id while the rest of the file is imported (`partial`).
Each therapist goes through `TherapistImportItemSchema` and the functions of `therapist_service.services`,
with `source="import"` and the import's id as the actor.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

from marshmallow import ValidationError
from sqlalchemy.exc import IntegrityError

from shared.config import Settings
from shared.extensions import db
from shared.errors import DomainError, StaleUpdate, flatten_messages
from shared.imports.parsing import decode
from shared.imports.types import InputError, Outcome, SourceFile, item_error
from shared.imports.service import ImporterSpec
from shared.imports.sources.folder import FolderSource
from therapist_service import services
from therapist_service.models import IMPORT_MODELS
from therapist_service.schemas import TherapistImportItemSchema

NAME = re.compile(r"^\d{5}\.json$")
FLUSH_EVERY = 2000
_schema = TherapistImportItemSchema()


def _check_shape(document: Any) -> tuple[dict[str, Any], list[Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("therapists"), list):
        raise InputError("wrong-shape", 'the top level must be an object with a "therapists" list',
                         pointer="/therapists")
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InputError("wrong-shape", '"metadata" must be an object', pointer="/metadata")
    items = document["therapists"]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError("wrong-shape", f"therapist {index} is a {type(item).__name__}, not an object",
                             pointer=f"/therapists/{index}", index=index)
    ids = Counter(item["id"] for item in items if isinstance(item.get("id"), str))
    repeated = sorted(i for i, n in ids.items() if n > 1)
    if repeated:
        raise InputError("duplicate-ids", f"{len(repeated)} id(s) appear more than once: "
                                          + ", ".join(repeated[:10]) + ("…" if len(repeated) > 10 else ""),
                         pointer="/therapists")
    return metadata, items


def _pointer(index: int, within: str = "/") -> str:
    """A pointer into the file, like the whole-file errors' pointers: `/therapists/3/basic_info`."""
    return f"/therapists/{index}" + ("" if within == "/" else within)


def _load(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One scraped therapist → (status, loaded data). Raises `ValidationError`, keyed as in the file."""
    data = _schema.load(item)
    return data.pop("status"), data


class TherapistFileHandler:
    """The therapist service's `FileHandler`."""

    def label(self, file: SourceFile) -> str:
        return file.name  # a postcode area: nothing personal

    def check_name(self, file: SourceFile) -> None:
        if not NAME.match(PurePosixPath(file.name).name):
            raise InputError("bad-name", "a scrape file must be named <5-digit postcode>.json, e.g. 52074.json")

    def apply(self, payload: bytes, file: SourceFile, *, import_id: int) -> Outcome:
        metadata, items = _check_shape(decode(payload))
        outcome = Outcome()
        declared = metadata.get("total_therapists")
        if declared is not None and declared != len(items):
            outcome.warnings.append(item_error(
                "count-mismatch", f"metadata.total_therapists says {declared}, the file has {len(items)}",
                pointer="/metadata/total_therapists"))

        stored = services.import_fingerprints(item["id"] for item in items if isinstance(item.get("id"), str))
        loaded: list[tuple[int, str, dict[str, Any], str]] = []
        for index, item in enumerate(items):
            ref = item.get("id") if isinstance(item.get("id"), str) else None
            entry_print = fingerprint(item)
            if ref in stored and _unchanged_by_fingerprint(item.get("status"), entry_print, *stored[ref]):
                outcome.count(services.UNCHANGED)  # the very entry imported last time: nothing to load
                continue
            try:
                status, data = _load(item)
            except ValidationError as error:
                outcome.count("failed")
                outcome.errors.extend(item_error("validation", e["detail"], pointer=_pointer(index, e["pointer"]),
                                                 index=index, ref=ref) for e in flatten_messages(error.messages))
                continue
            loaded.append((index, status, data, entry_print))

        try:
            with db.session.begin_nested():
                return self._write(loaded, items, copy.deepcopy(outcome), f"import:{import_id}", bulk=True)
        except IntegrityError:  # an external_id was created meanwhile by someone else: one by one
            return self._write(loaded, items, outcome, f"import:{import_id}", bulk=False)

    def _write(self, loaded: list[tuple[int, str, dict[str, Any], str]], items: list[dict[str, Any]],
               outcome: Outcome, actor: str, *, bulk: bool) -> Outcome:
        """Write the valid therapists through the service functions.

        `bulk`: new therapists are created `FLUSH_EVERY` at a time by `create_therapists` (one
        INSERT per table), and changed ones flushed and let go of as often, so memory stays flat;
        a clash on `external_id` then fails the whole attempt. Otherwise each therapist is created
        by `create_therapist` in a savepoint of its own, and a clash is that therapist's error.

        Entries under unknown ids are first looked up by practice identity, all in one query
        (SPEC §7.2.6); when every id is known, that costs nothing. Which stored therapists the
        file marks deleted or keeps is read from all its `items`, those skipped by fingerprint too.
        """
        existing = services.find_by_external_ids(data["external_id"] for _, _, data, _ in loaded)
        unknown = [data for _, status, data, _ in loaded if status != "deleted" and data["external_id"] not in existing]
        identities = {}
        if unknown:
            statuses = {item["id"]: item.get("status") for item in items if isinstance(item.get("id"), str)}
            identities = services.match_unknown_ids(
                unknown, marked_deleted={i for i, status in statuses.items() if status == "deleted"},
                kept={i for i, status in statuses.items() if status in ("new", "modified", "unchanged")})
        taken_over = {m.therapist.external_id: m.therapist for m in identities.values() if m.therapist is not None}
        write = {"source": "import", "actor": actor}
        new: list[tuple[dict[str, Any], str]] = []

        def write_pending() -> None:
            services.create_therapists([data for data, _ in new], fingerprints=[p for _, p in new], **write)
            new.clear()
            services.flush_and_release(keep=[*existing.values(), *taken_over.values()])

        for position, (index, status, data, entry_print) in enumerate(loaded, start=1):
            therapist = existing.pop(data["external_id"], None)
            match = identities.get(data["external_id"]) if therapist is None else None
            taking_over = match is not None and match.therapist is not None
            try:
                if status == "deleted" and data["external_id"] in taken_over:
                    action, warning = services.UNCHANGED, None  # it lives on under its new id
                elif taking_over:
                    action, warning = self._take_over(status, data, match.therapist, write, entry_print)
                elif therapist is None and status != "deleted":
                    if bulk:
                        new.append((data, entry_print))
                    else:
                        services.create_therapist(data, fingerprint=entry_print, **write)
                    action, warning = services.CREATED, None
                else:
                    action, warning = self._apply_one(status, data, therapist, write, entry_print)
            except DomainError as error:
                outcome.count("failed")
                outcome.errors.append(item_error(error.type, error.detail, pointer=_pointer(index), index=index,
                                                 ref=data["external_id"]))
                continue
            outcome.count(action)
            if warning:
                kind = "id-changed" if taking_over else "content-differs" if action == "updated" else "not-found"
                outcome.warnings.append(item_error(kind, warning, pointer=_pointer(index), index=index,
                                                   ref=data["external_id"]))
            if match is not None and not taking_over:
                outcome.warnings.append(item_error(
                    "possible-duplicate", services.describe_possible_duplicate(data["external_id"],
                                                                               match.possible_duplicates),
                    pointer=_pointer(index), index=index, ref=data["external_id"]))
            if bulk and position % FLUSH_EVERY == 0:
                write_pending()
        write_pending()
        return outcome

    @staticmethod
    def _take_over(status: str, data: dict[str, Any], therapist: Any, write: dict[str, str],
                   entry_print: str) -> tuple[str, str | None]:
        """SPEC §7.2.6: the entry is `therapist` under a new id. The action and the `id-changed`
        warning, which names both ids and ours, never a name."""
        previous_external_id = therapist.external_id
        try:
            action = services.take_over(therapist, data, stale_if_equal=status != "unchanged",
                                        fingerprint=entry_print, **write)
        except StaleUpdate:
            return services.IGNORED_STALE, None
        return action, services.describe_id_change(previous_external_id, therapist)

    @staticmethod
    def _apply_one(status: str, data: dict[str, Any], therapist: Any, write: dict[str, str],
                   entry_print: str) -> tuple[str, str | None]:
        """SPEC §7.2.3 for a therapist we have, or a deletion: the action taken and a warning, if any."""
        try:
            if status == "deleted":
                if therapist is None:
                    return services.UNCHANGED, "marked deleted but not known here; nothing to delete"
                return services.soft_delete(therapist, last_modified=data.get("last_modified"), **write), None
            if status == "unchanged":
                action = services.update_therapist(therapist, data, stale_if_equal=False, fingerprint=entry_print,
                                                   **write)
                return action, ("marked unchanged, but differed from the stored record; updated"
                                if action == services.UPDATED else None)
            return services.update_therapist(therapist, data, restore=True, fingerprint=entry_print, **write), None
        except StaleUpdate:
            return services.IGNORED_STALE, None


def fingerprint(item: dict[str, Any]) -> str:
    """The entry's content as scraped, `status` and `last_modified` left out, hashed."""
    content = {key: value for key, value in item.items() if key not in ("status", "last_modified")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _unchanged_by_fingerprint(status: Any, entry_print: str, stored_print: str | None, deleted: bool) -> bool:
    """The same entry as imported last time, and its status asks for nothing to happen."""
    if entry_print != stored_print:
        return False
    return status in ("deleted", "unchanged") if deleted else status in ("new", "modified", "unchanged")


def _source(settings: Settings) -> FolderSource | None:
    if not settings.THERAPIST_IMPORT_DIR:
        return None
    return FolderSource(settings.THERAPIST_IMPORT_DIR, settle_seconds=settings.THERAPIST_IMPORT_SETTLE_SECONDS,
                        polling=settings.THERAPIST_IMPORT_POLLING)


def spec(settings: Settings) -> ImporterSpec:
    return ImporterSpec(
        service="therapist_service",
        models=IMPORT_MODELS,
        make_source=_source,
        handler=TherapistFileHandler(),
        poll_seconds=lambda s: s.THERAPIST_IMPORT_RESCAN_SECONDS,
        retry_input_errors=False,
        missing_source_hint="set THERAPIST_IMPORT_DIR to the folder the scraper writes to",
    )
