"""The therapist's one shape (SPEC §6.2 / §8.2), used by the REST API, batch requests and the importer.

A scraped therapist loads with `TherapistImportItemSchema`: the same shape, its `id` being our
`external_id`, and its `status`.
A missing or null group is read as an empty one, so every stored group has all its keys.
"""
from __future__ import annotations

from typing import Any

from marshmallow import fields, pre_load, validate

from shared.schemas import (
    POSTCODE,
    Nested,
    StrictBoolean,
    StrictSchema,
    TrimmedString,
    UtcDateTime,
    optional_string,
    weekly_hours,
)
from therapist_service.models import GROUPS

INSURANCE = ("gesetzlich", "privat", "selbstzahler")
IMPORT_STATUSES = ("new", "modified", "unchanged", "deleted")
_ID_RULE = "required: a non-empty string of at most 200 characters"
_STATUS_RULE = "must be one of: " + ", ".join(IMPORT_STATUSES)


def _string_list() -> fields.List[str]:
    return fields.List(TrimmedString(validate=validate.Length(1, 200)), load_default=list)


class BasicInfoSchema(StrictSchema):
    salutation = optional_string(validate=validate.Length(max=50))
    title = optional_string(validate=validate.Length(max=100))
    first_name = TrimmedString(required=True, validate=validate.Length(1, 100))
    last_name = TrimmedString(required=True, validate=validate.Length(1, 100))


class LocationSchema(StrictSchema):
    street = optional_string(validate=validate.Length(max=200))
    house_number = optional_string(validate=validate.Length(max=20))
    postcode = optional_string(validate=POSTCODE)
    city = optional_string(validate=validate.Length(max=200))


class ContactSchema(StrictSchema):
    phone = optional_string(validate=validate.Length(max=50))
    email = optional_string(validate=[validate.Length(max=320), validate.Email()])
    fax = optional_string(validate=validate.Length(max=50))
    website = optional_string(validate=validate.Length(max=500))


class ProfessionalInfoSchema(StrictSchema):
    license = optional_string(validate=validate.Length(max=200))
    therapy_methods = _string_list()
    languages = _string_list()
    insurance = fields.List(fields.String(validate=validate.OneOf(
        INSURANCE, error="must be one of: " + ", ".join(INSURANCE))), load_default=list)


class AvailabilitySchema(StrictSchema):
    telephone_hours = weekly_hours(load_default=dict)
    accepts_new_patients = StrictBoolean(load_default=None, allow_none=True)
    waiting_time_weeks = fields.Integer(load_default=None, allow_none=True, strict=True,
                                        validate=validate.Range(min=0))


class TherapistSchema(StrictSchema):
    id = fields.Integer(dump_only=True)
    external_id = optional_string(validate=validate.Length(1, 200))
    previous_external_ids = fields.List(fields.String(), dump_only=True)  # SPEC §7.2.6: read-only
    last_modified = UtcDateTime(load_default=None, allow_none=True)
    deleted_at = fields.DateTime(dump_only=True, allow_none=True)
    version = fields.Integer(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)

    basic_info = Nested(BasicInfoSchema, required=True)
    # null is accepted for the other groups (as in scrape files): read as an empty group, see below
    location = Nested(LocationSchema, allow_none=True)
    contact = Nested(ContactSchema, allow_none=True)
    professional_info = Nested(ProfessionalInfoSchema, allow_none=True)
    availability = Nested(AvailabilitySchema, allow_none=True)

    @pre_load(pass_collection=False)
    def _empty_groups(self, data: object, **kwargs: Any) -> object:
        if isinstance(data, dict) and not kwargs.get("partial"):
            data = dict(data)
            for group in GROUPS[1:]:
                if data.get(group) is None:
                    data[group] = {}
        return data


class TherapistImportItemSchema(TherapistSchema):
    """One therapist of a scrape file (SPEC §8.2): `id` is the scraper's id (our `external_id`),
    `status` what the scraper says happened to the entry."""

    class Meta(TherapistSchema.Meta):
        exclude = ("id",)  # our id is not in a scrape; the scraper's `id` is external_id

    external_id = TrimmedString(data_key="id", required=True, validate=validate.Length(1, 200, error=_ID_RULE),
                                error_messages={key: _ID_RULE for key in ("required", "null", "invalid")})
    status = fields.String(required=True, load_only=True, validate=validate.OneOf(IMPORT_STATUSES, error=_STATUS_RULE),
                           error_messages={key: _STATUS_RULE for key in ("required", "null", "invalid")})


class TherapistQuerySchema(StrictSchema):
    external_id = fields.String()
    postcode = fields.String(validate=POSTCODE)
    city = fields.String()
    last_name = fields.String()
    therapy_method = fields.String()
    include_deleted = fields.Boolean(load_default=False)
