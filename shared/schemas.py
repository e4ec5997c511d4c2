"""Base schema and field types both services' schemas are built from.

Unknown fields are decided here, once: they are an error (422), at every depth.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from marshmallow import RAISE, Schema, ValidationError, fields, validate

WEEKDAYS = ("montag", "dienstag", "mittwoch", "donnerstag", "freitag", "samstag", "sonntag")
_TIME_RANGE = re.compile(r"^(?P<sh>[01]\d|2[0-3]):(?P<sm>[0-5]\d)-(?P<eh>[01]\d|2[0-4]):(?P<em>[0-5]\d)$")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE
        ordered = True


class TrimmedString(fields.String):
    """A string stored without surrounding whitespace; length rules apply after trimming."""

    def _deserialize(self, value, attr, data, **kwargs):
        result = super()._deserialize(value, attr, data, **kwargs)
        return result.strip()


class UtcDateTime(fields.DateTime):
    """ISO-8601 date-time; a value without a zone is UTC (SPEC §8.2)."""

    def _deserialize(self, value, attr, data, **kwargs):
        result = super()._deserialize(value, attr, data, **kwargs)
        if result.tzinfo is None:
            result = result.replace(tzinfo=timezone.utc)
        return result.astimezone(timezone.utc)


def validate_time_range(value: str) -> None:
    match = _TIME_RANGE.match(value)
    if not match:
        raise ValidationError(f"{value!r} is not a time range HH:MM-HH:MM")
    start = int(match["sh"]) * 60 + int(match["sm"])
    end = int(match["eh"]) * 60 + int(match["em"])
    if end > 24 * 60 or end <= start:
        raise ValidationError(f"{value!r}: the end must be after the start, at most 24:00")


def weekly_hours(**kwargs) -> fields.Dict:
    """`{"montag": ["09:00-12:00"], ...}` — the shape of patients' and therapists' time slots."""
    return fields.Dict(
        keys=fields.String(validate=validate.OneOf(WEEKDAYS, error="must be a weekday montag … sonntag")),
        values=fields.List(fields.String(validate=validate_time_range)),
        **kwargs,
    )


POSTCODE = validate.Regexp(r"^\d{5}$", error="must be 5 digits")


def optional_string(**kwargs) -> TrimmedString:
    return TrimmedString(load_default=None, allow_none=True, **kwargs)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class AsOfQuerySchema(StrictSchema):
    at = UtcDateTime(metadata={"description": "ISO-8601 instant: the record as it was then"})


class VersionSchema(StrictSchema):
    """One entry of `/history`."""

    version = fields.Integer()
    changed_at = fields.DateTime()
    source = fields.String()
    actor = fields.String()
    data = fields.Dict()


class StrictBoolean(fields.Boolean):
    """Only JSON `true` / `false`: a registration saying "yes" or 1 is an error, not a guess."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value
