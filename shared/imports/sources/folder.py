"""A folder the scraper writes into, watched with watchdog and rescanned on a schedule (SPEC §7.2.1).

Handlers only enqueue paths (an exception in a handler would kill the observer for good).
A file is read only once it has not changed for the settle time, so a file still being
written is never read half-way. Names not ending in `.json` and hidden files are ignored;
files are never moved or deleted.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from shared.imports.types import Fetched, SourceFile, SourceUnavailable, WatchedSource

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def is_candidate(relative: str) -> bool:
    parts = relative.split("/")
    return relative.endswith(".json") and not any(part.startswith(".") for part in parts)


class _Enqueue(FileSystemEventHandler):
    def __init__(self, folder: FolderSource):
        self.folder = folder

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.folder.notice(os.fsdecode(event.src_path))

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.folder.notice(os.fsdecode(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.folder.notice(os.fsdecode(event.dest_path))


class FolderSource(WatchedSource):
    kind = "folder"
    finish_concurrency = 0  # local reads: nothing to overlap, and files are never deleted

    def __init__(self, root: str | Path, *, settle_seconds: float, polling: bool = False):
        self.root = Path(root).resolve()
        self.settle_seconds = settle_seconds
        self.polling = polling
        self.description = "watched folder"
        self._pending: dict[str, tuple[int, int] | None] = {}  # relative name → last (size, mtime_ns)
        self._pending_lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._observer: BaseObserver | None = None

    # ---- names and settling --------------------------------------------------------------------

    def relative(self, path: str | Path) -> str | None:
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def notice(self, path: str) -> None:
        """Called from watchdog's thread: remember the path, nothing else."""
        relative = self.relative(path)
        if relative and is_candidate(relative):
            with self._pending_lock:
                self._pending.setdefault(relative, None)

    def _settled(self, relative: str, now: float) -> SourceFile | Literal[False] | None:
        """The file if it is settled; None if it is gone; False if it is still changing."""
        try:
            stat = (self.root / relative).stat()
        except OSError:  # gone, or not ours to read: either way nothing to import now
            return None
        signature = (stat.st_size, stat.st_mtime_ns)
        with self._pending_lock:
            previous = self._pending.get(relative)
            self._pending[relative] = signature
        quiet = now - stat.st_mtime_ns / 1e9 >= self.settle_seconds
        if quiet and (previous is None or previous == signature):
            return SourceFile(name=relative, size=stat.st_size,
                              updated=datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC))
        return False

    def ready_files(self) -> list[SourceFile]:
        """Noticed files that have settled (removed from the waiting list)."""
        now = time.time()
        with self._pending_lock:
            names = sorted(self._pending)
        ready: list[SourceFile] = []
        for relative in names:
            result = self._settled(relative, now)
            if result is False:
                continue
            with self._pending_lock:
                self._pending.pop(relative, None)
            if result is not None:
                ready.append(result)
        return ready

    def waiting(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    # ---- the Source protocol -------------------------------------------------------------------

    def list(self) -> list[SourceFile]:
        """Every settled candidate in the folder, oldest first; unsettled ones wait for a later look."""
        if not self.root.is_dir():
            raise SourceUnavailable("the import folder does not exist or is not a folder")
        found = []
        for directory, subdirectories, files in os.walk(self.root):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
            for name in files:
                relative = Path(directory, name).relative_to(self.root).as_posix()
                if is_candidate(relative):
                    found.append(relative)
        now = time.time()
        ready: list[SourceFile] = []
        for relative in found:
            result = self._settled(relative, now)
            if result is not None and result is not False:
                with self._pending_lock:
                    self._pending.pop(relative, None)
                ready.append(result)
        ready.sort(key=lambda f: (f.updated, f.name))
        return ready

    def fetch(self, file: SourceFile, max_bytes: int) -> Fetched:
        path = self.root / file.name
        try:
            stat = path.stat()
            key = (file.name, stat.st_size, stat.st_mtime_ns)
            if stat.st_size > max_bytes:
                sha = self._hashes.get(key) or self._hash_file(path)
                self._hashes[key] = sha
                return Fetched(payload=None, sha256=sha, size=stat.st_size)
            payload = path.read_bytes()
        except FileNotFoundError:
            raise SourceUnavailable("the file disappeared before it was read") from None
        except OSError as error:
            raise SourceUnavailable(f"the file could not be read ({type(error).__name__})") from None
        return Fetched(payload=payload, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))

    @staticmethod
    def _hash_file(path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def finish(self, file: SourceFile) -> None:
        """Folder files stay where they are: the scraper owns them."""

    # ---- the observer --------------------------------------------------------------------------

    def start_watching(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        observer = PollingObserver(timeout=1) if self.polling else Observer(timeout=1)
        observer.schedule(_Enqueue(self), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("watching the import folder (%s)", "polling" if self.polling else "inotify")

    def observer_alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop_watching(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)
