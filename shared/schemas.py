"""Base schema and field types both services' schemas are built from.

Unknown fields are decided here, once: they are an error (422), at every depth. So are strings
PostgreSQL cannot store (NUL characters, unpaired surrogates): a 422 naming the field, not a 500.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

WEEKDAYS = ("montag", "dienstag", "mittwoch", "donnerstag", "freitag", "samstag", "sonntag")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE_JSON = re.compile(r"\\u0000|[\ud800-\udfff]")  # the same, as json.dumps writes it
_TIME_RANGE = re.compile(r"^(?P<sh>[01]\d|2[0-3]):(?P<sm>[0-5]\d)-(?P<eh>[01]\d|2[0-4]):(?P<em>[0-5]\d)$")


def _unstorable_strings(value: Any) -> Any:
    """marshmallow-style messages for every string (or key) in `value` PostgreSQL would refuse."""
    message = ["must not contain NUL characters or unpaired surrogates"]
    if isinstance(value, str):
        return message if _UNSTORABLE.search(value) else None
    if isinstance(value, Mapping):  # a dict, or webargs' view of the query string
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    found: dict[Any, Any] = {}
    for key, item in items:
        inner = message if isinstance(key, str) and _UNSTORABLE.search(key) else _unstorable_strings(item)
        if inner:
            found[key] = inner
    return found or None


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE
        ordered = True

    @pre_load(pass_collection=True)
    def _storable_strings_only(self, data, **_kwargs):
        if getattr(self, "strings_checked_by_parent", False):
            return data  # a `Nested` group: the outer schema looked at every string in it already
        # Fast path: one C-level serialisation and search; the walk only runs to name the field.
        # Only for plain JSON: json.dumps writes webargs' query-string view through str(), where a
        # NUL is spelled \x00 and would slip past the search.
        if isinstance(data, (dict, list)) and not _UNSTORABLE_JSON.search(
                json.dumps(data, ensure_ascii=False, default=str)):
            return data
        found = _unstorable_strings(data)
        if found:
            raise ValidationError(found if isinstance(found, dict) else {"_schema": found})
        return data


class Nested(fields.Nested):
    """A nested `StrictSchema` inside another: the outer one has checked every string in it."""

    @property
    def schema(self):
        schema = super().schema
        schema.strings_checked_by_parent = True
        return schema


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
        try:
            return result.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise ValidationError("is outside the range of supported date-times") from None


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
