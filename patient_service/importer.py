"""How a registration file from the bucket becomes patient service calls (SPEC §7.1, §8.1).

The object name must be `{nachname}_{vorname}_{YYYYMMDD}_{token}.json` and its token must be the
file's `registration_token`. The file is loaded with `RegistrationFileSchema` (whose
`patient_data` is `PatientSchema`, as for `POST /api/patients`) and applied by
`services.import_registration`, in the runner's one transaction with the import record.

Object names contain the patient's name: logs, errors that reach on-call, alerts and backup
copies name the registration token instead.
"""
from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from patient_service import services
from patient_service.models import IMPORT_MODELS
from patient_service.schemas import RegistrationFileSchema
from shared.config import Settings
from shared.errors import DomainError, flatten_messages
from shared.imports.backup import safe_file_name, write_backup
from shared.imports.handler import FileHandlerBase
from shared.imports.parsing import decode
from shared.imports.service import ImporterSpec
from shared.imports.sources.bucket import GcsBucket, LocalBucket, make_bucket
from shared.imports.types import InputError, Outcome, SourceFile, item_error

NAME = re.compile(r"^(?P<nachname>[^_]+)_(?P<vorname>[^_]+)_(?P<date>\d{8})_(?P<token>[A-Za-z0-9-]+)\.json$")
_schema = RegistrationFileSchema()


def registration_label(token: str) -> str:
    """The import record's label of a registration file: its token, never the patient's name. The
    erasure and the export find a patient's import records by it."""
    return f"registration {token}"


def backup_name(token: str, generation: int | None) -> str:
    """The file name of a registration file's backup copy (token and bucket generation), as
    `write_backup` writes it. The erasure deletes the copies by it."""
    return safe_file_name(f"{token}-{generation}.json")


@dataclass(frozen=True)
class ObjectName:
    token: str | None  # the registration token, when the last segment has the expected form
    problem: str | None  # why the name is refused; None for a good name


@functools.lru_cache(maxsize=4096)
def parse_object_name(name: str) -> ObjectName:
    """The one check of an object name; label, name check and import all ask it (cached: they ask
    about the same file one after another)."""
    parts = name.replace("\\", "/").split("/")
    match = NAME.match(parts[-1])
    token = match["token"] if match else None
    if any(part in ("..", ".") for part in parts) or "\\" in name:
        return ObjectName(token, "the object name contains a '..' or '.' path segment or a backslash")
    if not match:
        return ObjectName(None, "the object name must be {nachname}_{vorname}_{YYYYMMDD}_{token}.json")
    try:
        datetime.strptime(match["date"], "%Y%m%d")
    except ValueError:
        return ObjectName(token, "the date in the object name is not a valid YYYYMMDD date")
    return ObjectName(token, None)


class RegistrationFileHandler(FileHandlerBase):
    """The patient service's `FileHandler`."""

    def __init__(self, backup_dir: str | None):
        self.backup_dir = backup_dir
        self._backups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup")

    def label(self, file: SourceFile) -> str:
        token = parse_object_name(file.name).token
        if token and ".." not in file.name:
            return registration_label(token)
        return f"object {hashlib.sha256(file.name.encode()).hexdigest()[:12]} (name not in the expected form)"

    def check_name(self, file: SourceFile) -> None:
        problem = parse_object_name(file.name).problem
        if problem is not None:
            raise InputError("bad-name", problem)

    def apply(self, payload: bytes, file: SourceFile, *, import_id: int) -> Outcome:
        """Back the file up and import it. The backup is written (and fsynced) while the file is
        validated and imported, and waited for before returning, so it is on disk before the
        import commits — and an import whose backup failed does not commit."""
        token = parse_object_name(file.name).token
        if token is None:
            raise InputError("bad-name", "the object name has no registration token")  # check_name refused it before
        backup = (self._backups.submit(write_backup, self.backup_dir, backup_name(token, file.generation), payload)
                  if self.backup_dir else None)
        try:
            outcome = self._import(payload, token, import_id)
        except BaseException:
            if backup is not None:
                wait([backup])  # the file's own error is the one to report
            raise
        if backup is not None:
            backup.result()
        return outcome

    def _import(self, payload: bytes, token: str, import_id: int) -> Outcome:
        document = decode(payload)
        if not isinstance(document, dict):
            raise InputError("wrong-shape", "the file must be a JSON object with patient_data, consent_metadata, "
                                            "registration_timestamp and registration_token")
        try:
            registration = _schema.load(document)
        except ValidationError as error:
            errors = [item_error("validation", e["detail"], pointer=e["pointer"], index=0, ref=token)
                      for e in flatten_messages(error.messages)]
            raise InputError("validation", f"{len(errors)} field(s) invalid", errors=errors) from None
        if registration["registration_token"] != token:
            raise InputError("token-mismatch", "the token in the object name is not the file's registration_token",
                             pointer="/registration_token")

        outcome = Outcome()
        try:
            _patient, action, warnings = services.import_registration(
                registration["patient_data"], dict(document["consent_metadata"]),  # kept in full, exactly as sent
                token=token, registered_at=registration["registration_timestamp"],
                consent_given_at=registration["consent_metadata"]["timestamp_utc"], import_id=import_id,
                sha256=hashlib.sha256(payload).hexdigest(), source="import", actor=f"import:{import_id}")
        except DomainError as error:
            raise InputError(error.type, error.detail) from None
        outcome.count(action)
        outcome.warnings += [item_error("possible-duplicate", warning, index=0, ref=token) for warning in warnings]
        return outcome


def _source(settings: Settings) -> GcsBucket | LocalBucket | None:
    return make_bucket(settings.PATIENT_IMPORT_SOURCE) if settings.PATIENT_IMPORT_SOURCE else None


def spec(settings: Settings, *, after_pass: Callable[[], Any] | None = None) -> ImporterSpec:
    """The patient importer; `after_pass`: its upkeep after every full pass (`privacy.Housekeeping`)."""
    return ImporterSpec(
        service="patient_service",
        models=IMPORT_MODELS,
        make_source=_source,
        handler=RegistrationFileHandler(settings.PATIENT_IMPORT_BACKUP_DIR),
        poll_seconds=lambda s: s.PATIENT_IMPORT_INTERVAL_SECONDS,
        retry_input_errors=True,
        name_scope="patients:read",  # a registration file's name holds the patient's name
        missing_source_hint="set PATIENT_IMPORT_SOURCE to gs://bucket[/prefix] or a local folder",
        after_pass=after_pass,
    )
