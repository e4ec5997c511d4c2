"""The patient's one shape (SPEC §6.1), used by the REST API, batch requests and the importer."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import INCLUDE, ValidationError, fields, post_load, validate, validates

from shared.schemas import (
    POSTCODE,
    SERVER_RULE,
    Nested,
    StrictBoolean,
    StrictSchema,
    TrimmedString,
    UtcDateTime,
    VersionSchema,
    optional_string,
    weekly_hours,
)

ANREDEN = ("Herr", "Frau", "Divers")
GESCHLECHTER = ("männlich", "weiblich", "divers", "keine_angabe")
VERFAHREN = ("Verhaltenstherapie", "Tiefenpsychologisch fundierte Psychotherapie",
             "Analytische Psychotherapie", "Systemische Therapie")
THERAPEUTENGESCHLECHT = ("männlich", "weiblich", "egal")
VERKEHRSMITTEL = ("Auto", "ÖPNV")
MAX_AGE_YEARS = 120
REGISTRATION_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
BERLIN = ZoneInfo("Europe/Berlin")


def _one_of(choices: Sequence[str]) -> validate.OneOf:
    return validate.OneOf(choices, error="must be one of: " + ", ".join(choices))


class BerlinLocalDateTime(fields.Field[datetime]):
    """`YYYY-MM-DD HH:MM:SS` in Berlin's local time (SPEC §8.1), loaded as the moment in UTC."""

    def _deserialize(self, value: object, attr: str | None, data: Mapping[str, Any] | None,
                     **kwargs: Any) -> datetime:
        try:
            local = datetime.strptime(value, REGISTRATION_TIMESTAMP_FORMAT) if isinstance(value, str) else None
        except ValueError:
            local = None
        if local is None:
            raise ValidationError("must be local time YYYY-MM-DD HH:MM:SS (Europe/Berlin)")
        try:
            return local.replace(tzinfo=BERLIN).astimezone(UTC)
        except OverflowError:  # 0001-01-01 00:30 in Berlin is before year 1 in UTC
            raise ValidationError("is outside the range of supported date-times") from None


class RaeumlicheVerfuegbarkeitSchema(StrictSchema):
    max_km = fields.Integer(required=True, strict=True, validate=validate.Range(1, 200))


class PatientSchema(StrictSchema):
    """A patient as clients send it and as `patient_data` in a registration file."""

    id = fields.Integer(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)
    version = fields.Integer(dump_only=True)

    anrede = fields.String(load_default=None, allow_none=True, validate=_one_of(ANREDEN))
    geschlecht = fields.String(load_default=None, allow_none=True, validate=_one_of(GESCHLECHTER))
    vorname = TrimmedString(required=True, validate=validate.Length(1, 100))
    nachname = TrimmedString(required=True, validate=validate.Length(1, 100))
    geburtsdatum = fields.Date(required=True, metadata={
        SERVER_RULE: f"not in the future, at most {MAX_AGE_YEARS} years ago"})
    email = TrimmedString(required=True, validate=[validate.Length(max=320), validate.Email()])
    # Checked after trimming, so it neither starts nor ends with a space: written so, the published
    # pattern also refuses a blank number, as the server does.
    telefon = optional_string(validate=[validate.Length(max=50), validate.Regexp(
        r"^[0-9+\-/()]([0-9 +\-/()]*[0-9+\-/()])?$", error="may contain only digits, spaces and + - / ( )")])
    strasse = optional_string(validate=validate.Length(max=200))
    plz = optional_string(validate=POSTCODE)
    ort = optional_string(validate=validate.Length(max=200))
    krankenkasse = optional_string(validate=validate.Length(max=200))
    symptome = fields.List(fields.String(validate=validate.Length(1, 200)), load_default=None,
                           allow_none=True)
    erfahrung_mit_psychotherapie = StrictBoolean(load_default=None, allow_none=True)
    offen_fuer_gruppentherapie = StrictBoolean(load_default=None, allow_none=True)
    bevorzugtes_therapieverfahren = fields.List(fields.String(validate=_one_of(VERFAHREN)),
                                                load_default=None, allow_none=True)
    bevorzugtes_therapeutengeschlecht = fields.String(load_default=None, allow_none=True,
                                                      validate=_one_of(THERAPEUTENGESCHLECHT))
    zeitliche_verfuegbarkeit = weekly_hours(load_default=None, allow_none=True)
    raeumliche_verfuegbarkeit = Nested(RaeumlicheVerfuegbarkeitSchema, load_default=None,
                                              allow_none=True)
    verkehrsmittel = fields.String(load_default=None, allow_none=True, validate=_one_of(VERKEHRSMITTEL))

    @validates("geburtsdatum")
    def _plausible_birth_date(self, value: date, **_kwargs: Any) -> None:
        today = date.today()
        if value > today:
            raise ValidationError("must not be in the future")
        try:
            earliest = today.replace(year=today.year - MAX_AGE_YEARS)
        except ValueError:  # 29 February
            earliest = today.replace(year=today.year - MAX_AGE_YEARS, day=28)
        if value < earliest:
            raise ValidationError(f"must be at most {MAX_AGE_YEARS} years ago")

    @post_load
    def _normalise(self, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        if data.get("email"):
            data["email"] = data["email"].lower()
        return data


class PatientQuerySchema(StrictSchema):
    email = fields.String()
    nachname = fields.String()
    vorname = fields.String()
    geburtsdatum = fields.Date()
    plz = fields.String(validate=POSTCODE)
    updated_since = UtcDateTime()


class ConsentMetadataSchema(StrictSchema):
    """The keys a consent needs; every other key is kept as sent (it is the proof of consent)."""

    class Meta:
        unknown = INCLUDE

    ip_address = TrimmedString(required=True, validate=validate.Length(1, 100))
    user_agent = fields.String(required=True, validate=validate.Length(1, 2000))
    timestamp_utc = UtcDateTime(required=True)
    consent_version = fields.String(load_default=None, allow_none=True)


class RegistrationFileSchema(StrictSchema):
    """A registration file from the bucket (SPEC §8.1); `patient_data` is a `PatientSchema`.
    Loaded, `registration_timestamp` and `consent_metadata.timestamp_utc` are moments in UTC."""

    patient_data = Nested(PatientSchema, required=True)
    consent_metadata = Nested(ConsentMetadataSchema, required=True)
    registration_timestamp = BerlinLocalDateTime(required=True)
    registration_token = TrimmedString(required=True, validate=[
        validate.Length(1, 100), validate.Regexp(r"^[A-Za-z0-9-]+$", error="may contain only letters, digits and -")])


class ConsentSchema(StrictSchema):
    id = fields.Integer()
    registration_id = fields.Integer(allow_none=True)
    consent_version = fields.String(allow_none=True)
    given_at = fields.DateTime()
    recorded_at = fields.DateTime()
    metadata = fields.Dict(attribute="metadata_")


class RegistrationSchema(StrictSchema):
    id = fields.Integer()
    token = fields.String()
    registered_at = fields.DateTime()
    import_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()


class PatientBatchItemSchema(PatientSchema):
    """A batch item: a patient, optionally with our `id` to match on."""

    id = fields.Integer(strict=True, load_default=None, allow_none=True)


# ---- data protection (SPEC §10) ------------------------------------------------------------------

class ErasureRequestSchema(StrictSchema):
    reason = TrimmedString(required=True, validate=validate.Length(1, 500), metadata={
        "description": "why the data are erased, e.g. `Art. 17 request of 2026-11-29`; it is kept, so it "
                       "must not name the person"})


class ErasureSchema(StrictSchema):
    """An erasure record: what was removed, never whose data they were."""

    id = fields.Integer()
    patient_id = fields.Integer()
    erased_at = fields.DateTime()
    actor = fields.String()
    reason = fields.String()
    rows_removed = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "rows deleted (patients, patient_versions, consents, registrations) or scrubbed "
                       "(imports: name replaced by the label; idempotency_keys: stored answer replaced), per table"})
    files_removed = fields.Integer(metadata={"description": "backup copies deleted"})
    files_pending = fields.Integer(metadata={"description": "backup copies not yet deleted: retried, alerted"})


class AccessLogEntrySchema(StrictSchema):
    id = fields.Integer()
    read_at = fields.DateTime()
    actor = fields.String()
    patient_id = fields.Integer()
    what = fields.String(metadata={"description": "record, as-of, history, consents, registrations, export or list"})


class ExportedImportSchema(StrictSchema):
    """An import record of one of the patient's files (its name holds the patient's name)."""

    id = fields.Integer()
    name = fields.String()
    status = fields.String()
    generation = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)


class PatientExportSchema(StrictSchema):
    """Everything stored about one patient (SPEC §10.2)."""

    exported_at = fields.DateTime()
    patient = fields.Nested(PatientSchema)
    deleted_at = fields.DateTime(allow_none=True)
    versions = fields.List(fields.Nested(VersionSchema))
    consents = fields.List(fields.Nested(ConsentSchema))
    registrations = fields.List(fields.Nested(RegistrationSchema))
    imports = fields.List(fields.Nested(ExportedImportSchema))
    access_log = fields.List(fields.Nested(AccessLogEntrySchema))
