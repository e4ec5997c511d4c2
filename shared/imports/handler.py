"""What a service's file handler must give the import runner, and what it may.

A handler maps one file to the service's functions. It MUST name a file without personal data
(`label`), refuse a name that is not one to import (`check_name`) and apply a file's bytes in the
runner's unit of work (`apply`).

It MAY do more for a local source's files, and says so by its capabilities, never by the runner
looking for methods:
- `supports_read_ahead`: the runner hands it each file it reads ahead (`prefetch`), to start on
  it (the therapist importer validates it in worker processes), and tells it when a pass ends
  (`forget_prefetched`);
- `supports_groups` (with read-ahead): small files read ahead can be applied together
  (`apply_group`), each with its own outcome, or refused (None, nothing written).

Subclass `FileHandlerBase`: it declares neither capability and gives their methods defaults
that do nothing, so a handler writes only what it supports.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from shared.imports.types import Outcome, SourceFile

GroupMember = tuple[bytes, SourceFile, int]  # a file of a group: (its bytes, the file, its import id)


class FileHandler(Protocol):
    """The runner's view of a handler: the three musts, the two capabilities and their methods."""

    supports_read_ahead: bool
    supports_groups: bool

    def label(self, file: SourceFile) -> str:
        """What logs, alerts and the dashboard call the file: never a personal name."""
        ...

    def check_name(self, file: SourceFile) -> None:
        """Raise `InputError` unless the file's name is one to import (it is then never read)."""
        ...

    def apply(self, payload: bytes, file: SourceFile, *, import_id: int) -> Outcome:
        """Write the file through the service functions in the current unit of work; raise
        `InputError` for a file that cannot be imported at all."""
        ...

    def prefetch(self, payload: bytes) -> None:
        """A file the runner read ahead of its turn (only with `supports_read_ahead`)."""
        ...

    def forget_prefetched(self) -> None:
        """The pass is over: let go of what was prefetched and not applied."""
        ...

    def apply_group(self, files: list[GroupMember]) -> list[Outcome] | None:
        """Apply files read ahead together, one outcome each, in the current unit of work; None,
        having written nothing, when they cannot go together (only with `supports_groups`)."""
        ...


class FileHandlerBase(ABC):
    """A handler with no capabilities beyond the musts; override what you support."""

    supports_read_ahead: bool = False
    supports_groups: bool = False

    @abstractmethod
    def label(self, file: SourceFile) -> str: ...

    @abstractmethod
    def check_name(self, file: SourceFile) -> None: ...

    @abstractmethod
    def apply(self, payload: bytes, file: SourceFile, *, import_id: int) -> Outcome: ...

    def prefetch(self, payload: bytes) -> None:
        return None

    def forget_prefetched(self) -> None:
        return None

    def apply_group(self, files: list[GroupMember]) -> list[Outcome] | None:
        return None
