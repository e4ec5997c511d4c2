"""The vocabulary of the import framework: files and what was read of them, a handler's outcome,
the errors a pass tells apart, and the protocols a source implements (a service's handler:
shared/imports/handler.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from shared.imports.models import FAILED, PARTIAL, SUCCEEDED, empty_counts


@dataclass(frozen=True)
class SourceFile:
    """A file as the source lists it. `generation` is set by bucket sources only."""

    name: str
    generation: int | None = None
    size: int | None = None
    updated: datetime | None = None


@dataclass
class Fetched:
    payload: bytes | None  # None when the file is larger than allowed
    sha256: str | None  # None when a bucket object was too large to download
    size: int


class Claim(Enum):
    """What the runner's claim decided about one listed file."""

    IMPORT = "import"  # a record is marked processing: import the file now
    FINISH_AGAIN = "finish-again"  # this version was imported; only finishing at the source was left
    SKIP = "skip"  # done, waiting for its retry time, or quarantined


def item_error(kind: str, detail: str, *, pointer: str = "/", index: int | None = None,
               ref: str | None = None) -> dict[str, Any]:
    return {"index": index, "ref": ref, "pointer": pointer, "detail": detail, "kind": kind}


class InputError(Exception):
    """The file itself cannot be imported. `kind` is short and safe to mail; `detail` says why."""

    def __init__(self, kind: str, detail: str, *, pointer: str = "/", index: int | None = None,
                 ref: str | None = None, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.pointer = pointer
        self.index = index
        self.ref = ref
        self.errors = errors  # several errors at once, e.g. every invalid field of a file

    def as_errors(self) -> list[dict[str, Any]]:
        if self.errors:
            return self.errors
        return [item_error(self.kind, self.detail, pointer=self.pointer, index=self.index, ref=self.ref)]


class SourceUnavailable(Exception):
    """The source could not be listed or read: an outage, not a property of the file."""


class FileVanished(Exception):
    """The file was deleted or replaced between listing and reading: nobody's error, no alert.
    A replacement is a new version and gets a record of its own."""


@dataclass
class Outcome:
    """What a handler did with one file."""

    counts: dict[str, int] = field(default_factory=empty_counts)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def count(self, action: str) -> None:
        self.counts[action] = self.counts.get(action, 0) + 1

    @property
    def status(self) -> str:
        if not self.errors:
            return SUCCEEDED
        applied = sum(v for k, v in self.counts.items() if k != "failed")
        return PARTIAL if applied else FAILED


class Source(Protocol):
    """Where files come from."""

    kind: str  # "gcs" or "folder": the record's `source`
    description: str  # safe to log and mail
    # More than 0 for a remote source: the next file downloads while one imports, and finishing
    # (deleting) runs in that many threads in the background.
    finish_concurrency: int

    def list(self) -> list[SourceFile]: ...

    def fetch(self, file: SourceFile, max_bytes: int) -> Fetched: ...

    def finish(self, file: SourceFile) -> None: ...


@runtime_checkable
class WatchedSource(Source, Protocol):
    """A source that notices new files itself (a folder under watchdog) while this process leads.
    The worker starts and stops the watching and hands over the files that have settled."""

    def start_watching(self) -> None: ...

    def stop_watching(self) -> None: ...

    def observer_alive(self) -> bool: ...

    def ready_files(self) -> list[SourceFile]: ...

    def waiting(self) -> int: ...
