"""Bucket sources for the patient importer (SPEC §7.1): one small interface, two implementations.

- `GcsBucket`: `gs://bucket[/prefix]` through the real google-cloud-storage client. Every object
  is downloaded at the generation it was listed with and deleted with `if_generation_match`, so a
  re-uploaded object (a new generation) is never deleted unread. Reads and listings use the
  client's `DEFAULT_RETRY` bounded by a deadline; the delete is retried too because it carries a
  precondition. A delete answered 404 — already gone, perhaps by our own earlier retried call — is
  done. GCS enforces the precondition itself, atomically: no request of ours looks at the
  generation first. (gcp-storage-emulator ignores `ifGenerationMatch` on a delete; the tests'
  emulator is given the check GCS makes, tests/patient_import/conftest.py.)
- `LocalBucket`: a folder that behaves like a bucket (list, read, delete), which `make run` uses.
  A file's generation is its modification time in nanoseconds; write files under a temporary
  name (or a hidden one) and rename them into place.
"""
from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from shared.imports.types import Fetched, FileVanished, SourceFile, SourceUnavailable

log = logging.getLogger(__name__)

RETRY_DEADLINE_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 30.0


def make_bucket(spec: str) -> GcsBucket | LocalBucket:
    """`gs://bucket[/prefix]` → `GcsBucket`; anything else is a local folder path."""
    if spec.startswith("gs://"):
        bucket, _, prefix = spec[len("gs://"):].partition("/")
        if not bucket:
            raise ValueError("PATIENT_IMPORT_SOURCE must look like gs://bucket[/prefix]")
        return GcsBucket(bucket, prefix)
    return LocalBucket(spec)


class GcsBucket:
    kind = "gcs"
    finish_concurrency = 4  # deletes are network round trips; they overlap the next file's import

    def __init__(self, bucket: str, prefix: str = ""):
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.description = f"gs://{bucket}/{self.prefix}"
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project="emulator", credentials=AnonymousCredentials())
        else:
            client = storage.Client()
        self.client = client
        self.bucket = client.bucket(bucket)
        retry = DEFAULT_RETRY
        self.retry = retry.with_timeout(RETRY_DEADLINE_SECONDS) if hasattr(retry, "with_timeout") \
            else retry.with_deadline(RETRY_DEADLINE_SECONDS)

    def _errors(self) -> tuple[type[BaseException], ...]:
        import requests
        from google.api_core import exceptions as google
        from google.auth import exceptions as auth

        return (google.GoogleAPIError, auth.GoogleAuthError, requests.RequestException, OSError)

    def list(self) -> list[SourceFile]:
        try:
            blobs = list(self.client.list_blobs(self.bucket, prefix=self.prefix or None, retry=self.retry,
                                                timeout=REQUEST_TIMEOUT_SECONDS))
        except self._errors() as error:
            raise SourceUnavailable(f"listing the bucket failed ({type(error).__name__})") from None
        files = [SourceFile(name=blob.name, generation=int(blob.generation), size=blob.size,
                            updated=blob.time_created)
                 for blob in blobs if blob.name.endswith(".json")]
        files.sort(key=lambda f: (f.updated or datetime.min.replace(tzinfo=UTC), f.name))
        return files

    def fetch(self, file: SourceFile, max_bytes: int) -> Fetched:
        from google.api_core import exceptions as google

        if file.size is not None and file.size > max_bytes:
            return Fetched(payload=None, sha256=None, size=file.size)
        blob = self.bucket.blob(file.name, generation=file.generation)
        try:
            payload = blob.download_as_bytes(if_generation_match=file.generation, retry=self.retry,
                                             timeout=REQUEST_TIMEOUT_SECONDS)
        except (google.NotFound, google.PreconditionFailed):
            raise FileVanished("the object was deleted or replaced before it was read") from None
        except self._errors() as error:
            raise SourceUnavailable(f"downloading failed ({type(error).__name__})") from None
        return Fetched(payload=payload, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))

    def finish(self, file: SourceFile) -> None:
        """Delete the object, only at the generation we imported."""
        from google.api_core import exceptions as google

        try:
            self.bucket.delete_blob(file.name, if_generation_match=file.generation, retry=self.retry,
                                    timeout=REQUEST_TIMEOUT_SECONDS)
        except google.NotFound:
            return
        except google.PreconditionFailed:
            log.info("object re-uploaded since it was read (precondition failed); not deleted")
        except self._errors() as error:
            raise SourceUnavailable(f"deleting failed ({type(error).__name__})") from None


class LocalBucket:
    kind = "folder"
    finish_concurrency = 0  # a local delete is quick: done in line

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.description = "local folder acting as a bucket"

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise FileVanished("the name points outside the bucket folder")
        return path

    def list(self) -> list[SourceFile]:
        if not self.root.is_dir():
            raise SourceUnavailable("the bucket folder does not exist")
        files = []
        for directory, subdirectories, names in os.walk(self.root):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
            for name in names:
                if name.startswith(".") or not name.endswith(".json"):
                    continue
                path = Path(directory, name)
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                files.append(SourceFile(name=path.relative_to(self.root).as_posix(), generation=stat.st_mtime_ns,
                                        size=stat.st_size,
                                        updated=datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC)))
        files.sort(key=lambda f: (f.generation, f.name))
        return files

    def fetch(self, file: SourceFile, max_bytes: int) -> Fetched:
        path = self._path(file.name)
        try:
            if path.stat().st_mtime_ns != file.generation:
                raise FileVanished("the file was replaced before it was read")
            if path.stat().st_size > max_bytes:
                return Fetched(payload=None, sha256=None, size=path.stat().st_size)
            payload = path.read_bytes()
        except FileNotFoundError:
            raise FileVanished("the file was deleted before it was read") from None
        return Fetched(payload=payload, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))

    def finish(self, file: SourceFile) -> None:
        path = self._path(file.name)
        try:
            if path.stat().st_mtime_ns != file.generation:
                log.info("file replaced since it was read; not deleted")
                return
            path.unlink()
        except FileNotFoundError:
            return
