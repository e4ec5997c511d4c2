"""Which files of a pass are read before their turn, and which go in together.

A remote source (a bucket): the next object downloads while this one imports. A local source
whose handler `supports_read_ahead`: the next files are read and handed to its `prefetch` (the
therapist importer validates them in worker processes meanwhile) — always the next `READ_AHEAD`,
and up to `READ_AHEAD_FILES` while what is read ahead stays within `READ_AHEAD_BYTES` — so that
small files can be imported `GROUP_FILES` at a time (`group_from`) while the next ones validate.
Imports and their transactions still happen in order. A file whose name is not one to import is
not read: it fails on its name when its turn comes.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from shared.imports.types import Fetched, Source, SourceFile

READ_AHEAD = 2
GROUP_FILES = 10
READ_AHEAD_FILES = 2 * GROUP_FILES
READ_AHEAD_BYTES = 8 * 1024 * 1024

Read = tuple[SourceFile, Fetched]
ImportedAlready = Callable[[list[Read]], set[tuple[str, str | None]]]  # (name, sha256) of those done as they are


class ReadAhead:
    """The reads ahead of one pass over `files`, by position. Close it when the pass ends."""

    def __init__(self, files: list[SourceFile], *, source: Source, max_file_bytes: int,
                 name_ok: Callable[[SourceFile], bool], prefetch: Callable[[bytes], None] | None,
                 groups: bool, imported_already: ImportedAlready):
        self.files = files
        self.source = source
        self.max_file_bytes = max_file_bytes
        self.name_ok = name_ok
        remote = source.finish_concurrency > 0
        self._downloads = ThreadPoolExecutor(1, thread_name_prefix="download") if remote else None
        self._prefetch = None if remote else prefetch
        self.groups = groups and self._prefetch is not None
        self.imported_already = imported_already
        self._reading: dict[int, Future[Fetched]] = {}
        self.depth = 1 if remote else READ_AHEAD_FILES if self._prefetch is not None else 0

    def take(self, position: int) -> Future[Fetched] | None:
        """What was read ahead of the file at `position` (its errors surface from the future)."""
        return self._reading.pop(position, None)

    def start_after(self, position: int) -> None:
        """Start reading the files after `position`, as far as the depth and the bytes allow."""
        files, reading = self.files, self._reading
        held = sum(files[p].size or 0 for p in reading)
        read: list[Read] = []
        for later in range(position + 1, min(position + 1 + self.depth, len(files))):
            if later in reading or not self.name_ok(files[later]):
                continue
            if self._downloads is not None:
                reading[later] = self._downloads.submit(self.source.fetch, files[later], self.max_file_bytes)
                continue
            size = files[later].size
            if later > position + READ_AHEAD and (size is None or held + size > READ_AHEAD_BYTES):
                break
            held += size or 0
            reading[later] = self._read_now(files[later])
            if (fetched := read_already(reading[later])) is not None and fetched.payload is not None:
                read.append((files[later], fetched))
        if read and self._prefetch is not None:
            self._hand_on(read)

    def _hand_on(self, read: list[Read]) -> None:
        """Prefetch what was read, but for the files imported already as they are now: a rescan
        finds every file again, and their claim only finishes them again."""
        assert self._prefetch is not None
        imported = self.imported_already(read)
        for file, fetched in read:
            if (file.name, fetched.sha256) not in imported:
                self._prefetch(fetched.payload)  # type: ignore[arg-type]  # read: not None

    def _read_now(self, file: SourceFile) -> Future[Fetched]:
        """Read a folder file that is next in line; the future holds what was read, or the error
        reading it (raised when its turn comes)."""
        ahead: Future[Fetched] = Future()
        try:
            ahead.set_result(self.source.fetch(file, self.max_file_bytes))
        except Exception as error:  # noqa: BLE001 — the file's own turn raises it
            ahead.set_exception(error)
        return ahead

    def group_from(self, position: int, current: Future[Fetched] | None) -> list[Read]:
        """The files from `position` on that were read ahead (up to `GROUP_FILES`), taken out of
        the reads, if the handler takes groups and there are at least two of them; else none."""
        if not self.groups:
            return []
        members: list[Read] = []
        for later in range(position, min(position + GROUP_FILES, len(self.files))):
            fetched = read_already(current if later == position else self._reading.get(later))
            if fetched is None or fetched.payload is None:
                break
            members.append((self.files[later], fetched))
        if len(members) < 2:
            return []
        for later in range(position + 1, position + len(members)):
            del self._reading[later]
        return members

    def next_to_claim(self, position: int) -> tuple[SourceFile, Fetched | None] | None:
        """The next file, if it is being read (its name is one to import) and its version is known:
        a bucket object's by its generation, a folder file's once read."""
        if position + 1 not in self._reading:
            return None
        following, read = self.files[position + 1], read_already(self._reading[position + 1])
        if following.generation is None and read is None:
            return None
        return following, read

    def close(self) -> None:
        if self._downloads is not None:
            self._downloads.shutdown(wait=True, cancel_futures=True)


def read_already(ahead: Future[Fetched] | None) -> Fetched | None:
    """What a read-ahead of the next file got, if it is done and got something; else None (a bucket
    object's version is its generation, known without reading it)."""
    if ahead is None or not ahead.done() or ahead.exception() is not None:
        return None
    return ahead.result()
