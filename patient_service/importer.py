"""How a registration file from the bucket becomes patient service calls (SPEC §7.1, §8.1).

The object name must be `{nachname}_{vorname}_{YYYYMMDD}_{token}.json` and its token must be the
file's `registration_token`. The file is loaded with `RegistrationFileSchema` (whose
`patient_data` is `PatientSchema`, as for `POST /api/patients`) and applied by
`services.import_registration`, in the runner's one transaction with the import record.

Object names contain the patient's name: logs, errors that reach on-call, alerts and backup
copies name the registration token instead.
"""
from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import ValidationError

from patient_service import privacy, services
from patient_service.models import IMPORT_MODELS
from patient_service.schemas import REGISTRATION_TIMESTAMP_FORMAT, RegistrationFileSchema
from shared.config import Settings
from shared.errors import DomainError, flatten_messages
from shared.imports.backup import write_backup
from shared.imports.parsing import decode
from shared.imports.types import InputError, Outcome, SourceFile, item_error
from shared.imports.service import ImporterSpec
from shared.imports.sources.bucket import make_bucket

NAME = re.compile(r"^(?P<nachname>[^_]+)_(?P<vorname>[^_]+)_(?P<date>\d{8})_(?P<token>[A-Za-z0-9-]+)\.json$")
BERLIN = ZoneInfo("Europe/Berlin")
_schema = RegistrationFileSchema()


def token_in_name(name: str) -> str | None:
    match = NAME.match(PurePosixPath(name).name)
    return match["token"] if match else None


class RegistrationFileHandler:
    """The patient service's `FileHandler`."""

    def __init__(self, backup_dir: str | None):
        self.backup_dir = backup_dir
        self._backups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup")

    def label(self, file: SourceFile) -> str:
        token = token_in_name(file.name)
        if token and ".." not in file.name:
            return f"registration {token}"
        return f"object {hashlib.sha256(file.name.encode()).hexdigest()[:12]} (name not in the expected form)"

    def check_name(self, file: SourceFile) -> None:
        parts = file.name.replace("\\", "/").split("/")
        if any(part in ("..", ".") for part in parts) or "\\" in file.name:
            raise InputError("bad-name", "the object name contains a '..' or '.' path segment or a backslash")
        match = NAME.match(parts[-1])
        if not match:
            raise InputError("bad-name", "the object name must be {nachname}_{vorname}_{YYYYMMDD}_{token}.json")
        try:
            datetime.strptime(match["date"], "%Y%m%d")
        except ValueError:
            raise InputError("bad-name", "the date in the object name is not a valid YYYYMMDD date") from None

    def apply(self, payload: bytes, file: SourceFile, *, import_id: int) -> Outcome:
        """Back the file up and import it. The backup is written (and fsynced) while the file is
        validated and imported, and waited for before returning, so it is on disk before the
        import commits — and an import whose backup failed does not commit."""
        token = token_in_name(file.name)
        backup = (self._backups.submit(write_backup, self.backup_dir, f"{token}-{file.generation}.json", payload)
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

        consent = dict(document["consent_metadata"])  # kept in full, exactly as sent
        registered_at = _berlin_to_utc(registration["registration_timestamp"], token)
        outcome = Outcome()
        try:
            patient, action, warnings = services.import_registration(
                registration["patient_data"], consent, token=token,
                registered_at=registered_at,
                consent_given_at=_consent_time(consent), import_id=import_id,
                sha256=hashlib.sha256(payload).hexdigest(), source="import", actor=f"import:{import_id}")
        except DomainError as error:
            raise InputError(error.type, error.detail) from None
        outcome.count(action)
        outcome.warnings += [item_error("possible-duplicate", warning, index=0, ref=token) for warning in warnings]
        return outcome


def _berlin_to_utc(local: str, token: str) -> datetime:
    try:
        return datetime.strptime(local, REGISTRATION_TIMESTAMP_FORMAT).replace(tzinfo=BERLIN).astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01 00:30 in Berlin is before year 1 in UTC
        raise InputError("validation", "1 field(s) invalid", errors=[item_error(
            "validation", "is outside the range of supported date-times", pointer="/registration_timestamp",
            index=0, ref=token)]) from None


def _consent_time(consent: dict[str, Any]) -> datetime:
    given = datetime.fromisoformat(consent["timestamp_utc"].replace("Z", "+00:00"))
    return given if given.tzinfo else given.replace(tzinfo=timezone.utc)


def _source(settings: Settings):
    return make_bucket(settings.PATIENT_IMPORT_SOURCE) if settings.PATIENT_IMPORT_SOURCE else None


def spec(settings: Settings) -> ImporterSpec:
    return ImporterSpec(
        service="patient_service",
        models=IMPORT_MODELS,
        make_source=_source,
        handler=RegistrationFileHandler(settings.PATIENT_IMPORT_BACKUP_DIR),
        poll_seconds=lambda s: s.PATIENT_IMPORT_INTERVAL_SECONDS,
        retry_input_errors=True,
        missing_source_hint="set PATIENT_IMPORT_SOURCE to gs://bucket[/prefix] or a local folder",
        # SPEC §10: backup copies erasures still owe, after every pass; retention, daily.
        after_pass=privacy.Housekeeping(settings.PATIENT_IMPORT_BACKUP_DIR,
                                        settings.PATIENT_IMPORT_BACKUP_RETENTION_DAYS,
                                        settings.ACCESS_LOG_RETENTION_DAYS),
    )
