"""How a scrape file becomes therapist service calls (SPEC §7.2, §8.2).

Whole-file problems — not UTF-8, not JSON, truncated, the wrong shape, an item that is not an
object, the same id twice — fail the file and write nothing. A therapist that fails validation
is reported with its index and id while the rest of the file is imported (`partial`).
Each therapist goes through `TherapistImportItemSchema` and the functions of `therapist_service.services`,
with `source="import"` and the import's id as the actor.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import msgspec
from marshmallow import ValidationError

from shared.config import Settings
from shared.db import bulk_first
from shared.errors import flatten_messages
from shared.imports import pool
from shared.imports.handler import FileHandlerBase
from shared.imports.parsing import decode
from shared.imports.readahead import READ_AHEAD_BYTES, READ_AHEAD_FILES
from shared.imports.service import ImporterSpec
from shared.imports.sources.folder import FolderSource
from shared.imports.types import InputError, Outcome, SourceFile, item_error
from therapist_service import services
from therapist_service.models import IMPORT_MODELS
from therapist_service.schemas import TherapistImportItemSchema

NAME = re.compile(r"^\d{5}\.json$")
CHUNK = 1000  # entries per validation task in a worker process, written together when back
POOLED_FROM = 2000  # fewer entries to validate are validated here: a worker would only add a hop
PREFETCH_MAX_BYTES = 4 * 1024 * 1024  # larger files are validated in chunks when their turn comes
AHEAD_MAX_BYTES = 2 * PREFETCH_MAX_BYTES + READ_AHEAD_BYTES  # what the runner reads ahead at most, kept
_PRELOAD = ("therapist_service.importer",)  # what the worker processes import once
_schema = TherapistImportItemSchema()
# One validated entry: (index, ref, fingerprint, status, loaded data, None) or, when invalid,
# (index, ref, fingerprint, None, None, the flattened error messages).
Validated = tuple[int, str | None, str, str | None, dict[str, Any] | None, list[dict[str, str]] | None]


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
    return metadata, items


class _Head(msgspec.Struct):
    """What is read of an entry before it is validated: which one it is, what happened to it, and
    what its practice identity is made of (§7.2.6). The rest of the entry stays bytes until a worker
    loads it."""

    id: Any = None
    status: Any = None
    basic_info: Any = None
    location: Any = None

    def identity(self) -> str | None:
        """The practice identity the entry will have once loaded, read from it as scraped (loading
        only trims strings, and folding trims them too); None when it has none or is malformed."""
        if not all(isinstance(group or {}, dict) for group in (self.basic_info, self.location)):
            return None
        return services.practice_identity({"basic_info": self.basic_info, "location": self.location})


@dataclass
class _Scrape:
    """A scrape file read for import: its metadata, and each entry as its JSON bytes and its head.
    The entries' bytes are slices of the file's (msgspec.Raw): a 45,000-therapist file is not held
    a second time as 150 MB of dicts; each entry is loaded where it is validated."""

    metadata: dict[str, Any]
    entries: list[msgspec.Raw]
    heads: list[_Head]


def _read_scrape(payload: bytes) -> _Scrape:
    """The file's whole-file problems (not UTF-8, not JSON, the wrong shape, an entry that is not an
    object, the same id twice) raised as `InputError`, as `_check_shape(decode(payload))` names them."""
    try:
        # msgspec checks the syntax of what it keeps as Raw but not its UTF-8 or its numbers: the
        # text is checked here (in pieces, so it is never held decoded), the other top-level
        # members are decoded, and each entry is decoded where it is validated (`_Unreadable`).
        # Left unchecked: the numbers in an earlier copy of a repeated top-level member, whose
        # value is ignored either way.
        _check_utf8(payload)
        top = msgspec.json.decode(payload, type=dict[str, msgspec.Raw])
        entries = msgspec.json.decode(top["therapists"], type=list[msgspec.Raw])
        metadata = msgspec.json.decode(top["metadata"], type=dict) if "metadata" in top else {}
        for key, member in top.items():
            if key not in ("therapists", "metadata"):
                msgspec.json.decode(member)
        heads = [msgspec.json.decode(entry, type=_Head) for entry in entries]
    except (msgspec.DecodeError, KeyError, RecursionError, UnicodeDecodeError):
        # Not a scrape as it should be, or text msgspec refuses (a byte-order mark): read whole, the
        # way that names what is wrong; what passes is imported all the same.
        metadata, items = _check_shape(decode(payload))
        entries = [msgspec.Raw(json.dumps(item).encode()) for item in items]  # ASCII: any string survives
        heads = [msgspec.convert(item, _Head) for item in items]
    ids = Counter(head.id for head in heads if isinstance(head.id, str))
    repeated = sorted(i for i, n in ids.items() if n > 1)
    if repeated:
        raise InputError("duplicate-ids", f"{len(repeated)} id(s) appear more than once: "
                                          + ", ".join(repeated[:10]) + ("…" if len(repeated) > 10 else ""),
                         pointer="/therapists")
    return _Scrape(metadata, entries, heads)


def _check_utf8(payload: bytes, piece: int = 1 << 20) -> None:
    """UnicodeDecodeError unless `payload` is UTF-8 (a megabyte at a time: 40 ms for 37 MB)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(payload)
    for start in range(0, len(view), piece):
        decoder.decode(view[start:start + piece], final=start + piece >= len(view))
    decoder.decode(b"", final=True)


def _pointer(index: int, within: str = "/") -> str:
    """A pointer into the file, like the whole-file errors' pointers: `/therapists/3/basic_info`."""
    return f"/therapists/{index}" + ("" if within == "/" else within)


def _load(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One scraped therapist → (status, loaded data). Raises `ValidationError`, keyed as in the file."""
    data = _schema.load(item)
    return data.pop("status"), data


@dataclass
class _Ahead:
    """A file read ahead (`TherapistFileHandler.prefetch`): the scrape, and its validation."""

    payload: bytes
    scrape: _Scrape
    validated: Future[Any]


class _ReadAhead:
    """The files read ahead, oldest first, each found again by the very bytes the runner read (it
    hands `apply` the object it handed `prefetch`). Kept: the files importing and those read ahead
    (`READ_AHEAD_FILES`, `AHEAD_MAX_BYTES`); what is older was not imported (unchanged, or waiting
    for a retry) and is let go of."""

    def __init__(self) -> None:
        self._files: list[_Ahead] = []

    def __len__(self) -> int:
        return len(self._files)

    def add(self, ahead: _Ahead) -> None:
        self._files.append(ahead)

    def make_room(self) -> None:
        while self._files and (len(self._files) > READ_AHEAD_FILES
                               or sum(len(a.payload) for a in self._files) > AHEAD_MAX_BYTES):
            del self._files[0]

    def find(self, payload: bytes) -> _Ahead | None:
        return next((ahead for ahead in self._files if ahead.payload is payload), None)

    def take(self, payload: bytes) -> _Ahead | None:
        ahead = self.find(payload)
        if ahead is not None:
            self._files.remove(ahead)
        return ahead

    def clear(self) -> None:
        self._files.clear()


class _Unreadable(Exception):
    """Entry `args[0]` is JSON msgspec read past but cannot decode (a string that is not UTF-8, a
    number beyond a float): `apply` has the whole file decoded to name the problem and its offset."""


def _entry(index: int, entry: msgspec.Raw) -> dict[str, Any]:
    try:
        return decode(entry)
    except InputError:
        raise _Unreadable(index) from None


def validate_entries(entries: list[tuple[int, msgspec.Raw]]) -> list[Validated]:
    """Read, fingerprint and load each `(index, entry's JSON)`, and prepare what a create writes
    (`PreparedTherapist`): in a worker process for a large file."""
    results: list[Validated] = []
    for index, entry in entries:
        item = _entry(index, entry)
        ref = item.get("id") if isinstance(item.get("id"), str) else None
        entry_print = fingerprint(item)
        try:
            status, data = _load(item)
        except ValidationError as error:
            results.append((index, ref, entry_print, None, None, flatten_messages(error.messages)))
            continue
        results.append((index, ref, entry_print, status, services.PreparedTherapist(data), None))
    return results


def _taken_in_chunks(entries: list[tuple[int, msgspec.Raw]], size: int) -> Iterator[list[tuple[int, msgspec.Raw]]]:
    """`entries` in chunks of `size`, each taken out of the list as it is handed on (so it can be
    freed once sent to a worker, rather than when the whole file is done)."""
    entries.reverse()
    while entries:
        yield [entries.pop() for _ in range(min(size, len(entries)))]


class TherapistFileHandler(FileHandlerBase):
    """The therapist service's `FileHandler`: it validates files read ahead, and imports small ones together."""

    supports_read_ahead = True
    supports_groups = True

    def label(self, file: SourceFile) -> str:
        return file.name  # a postcode area: nothing personal

    def check_name(self, file: SourceFile) -> None:
        if not NAME.match(PurePosixPath(file.name).name):
            raise InputError("bad-name", "a scrape file must be named <5-digit postcode>.json, e.g. 52074.json")

    def __init__(self) -> None:
        # The runner reads the next files (up to `READ_AHEAD_FILES`) before it imports this one,
        # so this one's and theirs are here at once.
        self._ahead = _ReadAhead()

    def prefetch(self, payload: bytes) -> None:
        """The runner reads the next files of a pass while this one imports: a small file is
        validated whole in a worker process meanwhile, and `apply` takes the results. A large one is
        validated chunk by chunk when its turn comes anyway; a file that cannot be read as a scrape
        fails when its turn comes. What is kept: `_ReadAhead`; everything is let go of once the pass
        ends (`forget_prefetched`)."""
        self._ahead.make_room()
        if len(payload) > PREFETCH_MAX_BYTES:
            return
        try:
            scrape = _read_scrape(payload)
        except InputError:
            return
        self._ahead.add(_Ahead(payload, scrape, pool.submit(
            validate_entries, list(enumerate(scrape.entries)), preload=_PRELOAD)))

    def forget_prefetched(self) -> None:
        """The pass is over: what was read ahead and not imported is let go of."""
        self._ahead.clear()

    def apply(self, payload: bytes, file: SourceFile, *, import_id: int) -> Outcome:
        ahead = self._ahead.take(payload)
        actor = f"import:{import_id}"
        try:
            return bulk_first(lambda: self._import(payload, actor, bulk=True, ahead=ahead),
                              lambda: self._import(payload, actor, bulk=False))
        except _Unreadable as unreadable:  # the runner rolls back what was written
            index = unreadable.args[0]
            _check_shape(decode(payload))  # raises the InputError that names the problem, at its offset in the file
            raise InputError("not-json", f"therapist {index} cannot be read as JSON", pointer=_pointer(index),
                             index=index) from None

    def _import(self, payload: bytes, actor: str, *, bulk: bool, ahead: _Ahead | None = None) -> Outcome:
        """Read the file, skip the entries imported unchanged last time (by fingerprint), validate
        the others and write them.

        A large file is validated in worker processes (`shared.imports.pool`) a chunk at a time,
        and each chunk is written as soon as it is back, while the next ones are validated — unless
        an entry under an unknown id may be a stored therapist under a new id (§7.2.6): which one
        it is depends on the whole file, so then the whole file is validated before anything is
        written. Entries are slices of the file's bytes until a worker loads them (`_Scrape`), and
        loaded ones are let go of once written."""
        if ahead is None and len(payload) > PREFETCH_MAX_BYTES:
            pool.start(_PRELOAD)  # the workers start while the file is read
        scrape = _read_scrape(payload) if ahead is None else ahead.scrape
        outcome = Outcome()
        stored = services.import_fingerprints(head.id for head in scrape.heads if isinstance(head.id, str))
        statuses = _statuses(scrape)
        entries, unknown_identities, _ = self._to_write(scrape, stored, outcome)
        del scrape
        invalid: list[dict[str, Any]] = []  # validation errors come first in the record, as they always did
        chunks = self._validated(entries, outcome, invalid, ahead)
        if bulk and not services.identities_in_use(unknown_identities):  # chunk by chunk, as validated
            for loaded in chunks:
                scope = services.EntryScope(known=stored.keys(), creates=services.TherapistCreates())
                _write(loaded, scope, outcome, actor)
        else:  # the whole file, for §7.2.6; after a clash, each new therapist in a savepoint of its own
            scope = services.EntryScope(statuses, creates=services.TherapistCreates() if bulk else None)
            _write([entry for loaded in chunks for entry in loaded], scope, outcome, actor)
        outcome.errors[:0] = invalid
        return outcome

    def apply_group(self, files: list[tuple[bytes, SourceFile, int]]) -> list[Outcome] | None:
        """Several small files read ahead (`prefetch`), as `(payload, file, import id)`, written as
        one: one lookup of their ids and one COPY per table for all of them. Each keeps its own
        outcome, pointers and actor (its import); the runner commits them together.

        None, with nothing written, unless every one was read ahead and none can change what
        another does: no id in two of them, and nothing for §7.2.6 to match whose outcome would
        depend on their order — no new entry's practice identity stored, or written by another of
        them (by a new entry or by an update of a stored therapist). The runner then imports them
        one at a time."""
        aheads = [self._ahead.find(payload) for payload, _, _ in files]
        if any(ahead is None for ahead in aheads):
            return None
        scrapes = [ahead.scrape for ahead in aheads if ahead is not None]
        ids = _disjoint_ids(scrapes)
        if ids is None:
            return None
        stored = services.import_fingerprints(ids)
        outcomes: list[Outcome] = []
        work: list[list[tuple[int, msgspec.Raw]]] = []
        unknown: set[str] = set()  # the practice identities of the files' new entries so far
        written: set[str] = set()  # and of all they write
        for scrape in scrapes:
            outcome = Outcome()
            entries, unknown_identities, written_identities = self._to_write(scrape, stored, outcome)
            if unknown_identities & written or written_identities & unknown:
                return None
            unknown |= unknown_identities
            written |= written_identities
            outcomes.append(outcome)
            work.append(entries)
        if services.identities_in_use(unknown):
            return None
        creates = services.TherapistCreates(held=True)  # all at once, after every file's other writes
        for (payload, _, import_id), ahead, entries, outcome in zip(files, aheads, work, outcomes, strict=True):
            self._ahead.take(payload)
            invalid: list[dict[str, Any]] = []
            loaded = [entry for chunk in self._validated(entries, outcome, invalid, ahead) for entry in chunk]
            _write(loaded, services.EntryScope(known=stored.keys(), creates=creates), outcome, f"import:{import_id}")
            outcome.errors[:0] = invalid
        creates.flush()
        return outcomes

    @staticmethod
    def _to_write(scrape: _Scrape, stored: dict[str, tuple[str | None, bool]],
                  outcome: Outcome) -> tuple[list[tuple[int, msgspec.Raw]], set[str], set[str]]:
        """The entries of `scrape` to validate and write — not those imported unchanged last time
        (by fingerprint; counted `unchanged` in `outcome`) — the practice identities of those
        under ids not `stored`, which §7.2.6 may match to a stored therapist, and those of all it
        writes but deletions."""
        declared = scrape.metadata.get("total_therapists")
        if declared is not None and declared != len(scrape.entries):
            outcome.warnings.append(item_error(
                "count-mismatch", f"metadata.total_therapists says {declared}, the file has {len(scrape.entries)}",
                pointer="/metadata/total_therapists"))
        entries: list[tuple[int, msgspec.Raw]] = []
        unknown_identities: set[str] = set()
        written_identities: set[str] = set()
        for index, (entry, head) in enumerate(zip(scrape.entries, scrape.heads, strict=True)):
            ref = head.id if isinstance(head.id, str) else None
            if ref in stored and _unchanged_by_fingerprint(head.status, fingerprint(_entry(index, entry)),
                                                           *stored[ref]):
                outcome.count(services.UNCHANGED)  # the very entry imported last time: nothing to load
                continue
            if head.status != "deleted" and (identity := head.identity()) is not None:
                written_identities.add(identity)
                if ref not in stored:
                    unknown_identities.add(identity)
            entries.append((index, entry))
        return entries, unknown_identities, written_identities

    @staticmethod
    def _validated(entries: list[tuple[int, msgspec.Raw]], outcome: Outcome, invalid: list[dict[str, Any]],
                   ahead: _Ahead | None = None) -> Iterator[list[tuple[int, str, dict[str, Any], str]]]:
        """The valid entries as `(index, status, loaded data, fingerprint)`, a chunk at a time; the
        invalid ones counted failed and their errors added to `invalid`, with pointers into the file.
        `ahead`: the whole file, validated while the file before it was imported."""
        results: Iterable[list[Validated]]
        if ahead is not None:
            wanted = {index for index, _ in entries}
            results = [[result for result in ahead.validated.result()
                                                   if result[0] in wanted]]
        elif len(entries) < POOLED_FROM:
            results = [validate_entries(entries)]
        else:
            results = pool.map_chunks(validate_entries, _taken_in_chunks(entries, CHUNK), preload=_PRELOAD)
        for chunk in results:
            loaded: list[tuple[int, str, dict[str, Any], str]] = []
            for index, ref, entry_print, status, data, messages in chunk:
                if messages is not None:
                    outcome.count("failed")
                    invalid.extend(item_error("validation", e["detail"], pointer=_pointer(index, e["pointer"]),
                                              index=index, ref=ref) for e in messages)
                else:
                    assert status is not None and data is not None  # what validates has both
                    loaded.append((index, status, data, entry_print))
            yield loaded


def _write(loaded: list[tuple[int, str, dict[str, Any], str]], scope: services.EntryScope, outcome: Outcome,
           actor: str) -> None:
    """Write the valid entries, `(index, status, loaded data, fingerprint)`, through the service
    layer (`services.write_entries`, in `scope`), and report each in `outcome` with its pointer."""
    entries = [services.Entry(data, status, entry_print) for _, status, data, entry_print in loaded]
    results = services.write_entries(entries, source="import", actor=actor, scope=scope)
    for (index, _, data, _), result in zip(loaded, results, strict=True):
        where = {"pointer": _pointer(index), "index": index, "ref": data["external_id"]}
        if result.error is not None:
            outcome.count("failed")
            outcome.errors.append(item_error(result.error.type, result.error.detail, **where))
            continue
        outcome.count(result.action)
        outcome.warnings.extend(item_error(kind, text, **where) for kind, text in result.warnings)


def _disjoint_ids(scrapes: list[_Scrape]) -> set[str] | None:
    """All ids the scrapes name, or None when one is in two of them."""
    ids: set[str] = set()
    for scrape in scrapes:
        own = {head.id for head in scrape.heads if isinstance(head.id, str)}
        if own & ids:
            return None
        ids |= own
    return ids


def _statuses(scrape: _Scrape) -> dict[str, Any]:
    """What the file says happened to each id it names."""
    return {head.id: head.status for head in scrape.heads if isinstance(head.id, str)}


def fingerprint(item: dict[str, Any]) -> str:
    """The entry's content as scraped, `status` and `last_modified` left out, hashed: its JSON with
    sorted keys, as msgspec writes it (json.dumps, 5 µs a therapist more, where msgspec cannot: an
    unpaired surrogate)."""
    content = {key: value for key, value in item.items() if key not in ("status", "last_modified")}
    try:
        text = msgspec.json.encode(content, order="sorted")
    except (UnicodeEncodeError, TypeError):
        text = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(text).hexdigest()


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
