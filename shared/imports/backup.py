"""Backup copies of downloaded files, written so that a crash never leaves half a copy and no
object name can write outside the backup folder."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str) -> str:
    """A single path component made from `name`: no separators, no leading dots, no `..`."""
    cleaned = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")
    return cleaned[:200] or "object"


def write_backup(directory: str | Path, name: str, payload: bytes) -> Path:
    """Write `payload` as `directory/<safe name>`: temporary name, flushed to disk, renamed."""
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    target = (folder / safe_file_name(name)).resolve()
    if target.parent != folder:  # cannot happen with a safe name; refuse rather than trust that
        raise ValueError("backup name escapes the backup folder")
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".backup-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a crash
    finally:
        os.close(directory_fd)
    return target
