"""Base schema and field types both services' schemas are built from.

Unknown fields are decided here, once: they are an error (422), at every depth. So are strings
PostgreSQL cannot store (NUL characters, unpaired surrogates): a 422 naming the field, not a 500.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from marshmallow import RAISE, Schema, ValidationError, fields, validate
from marshmallow.types import StrSequenceOrSet, UnknownOption

WEEKDAYS = ("montag", "dienstag", "mittwoch", "donnerstag", "freitag", "samstag", "sonntag")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# An OpenAPI extension naming a rule JSON Schema cannot say (also written into the description);
# the contract test accepts a 422 only for properties that carry it.
SERVER_RULE = "x-server-rule"
# Digits spelled [0-9]: Python's \d also matches other scripts' digits (and int() reads them),
# and the pattern is published, where \d means [0-9].
_TIME_RANGE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")
# marshmallow-style messages: a list of them for a value, or a dict of these by key or index.
_Messages = list[str] | dict[object, "_Messages"]


def _unstorable_strings(value: object) -> _Messages | None:
    """marshmallow-style messages for every string (or key) in `value` PostgreSQL would refuse."""
    message = ["must not contain NUL characters or unpaired surrogates"]
    if isinstance(value, str):
        return message if _UNSTORABLE.search(value) else None
    items: Iterable[tuple[object, object]]
    if isinstance(value, Mapping):  # a dict, or webargs' view of the query string
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    found: dict[object, _Messages] = {}
    for key, item in items:
        inner = message if isinstance(key, str) and _UNSTORABLE.search(key) else _unstorable_strings(item)
        if inner:
            found[key] = inner
    return found or None


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE
        ordered = True

    # True on a schema whose input an outer schema has checked already: a `Nested` group's, or a
    # batch item's loaded with the batch's. Its own load then does not look at every string again.
    strings_checked_by_parent = False

    def load(self, data: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, many: bool | None = None,
             partial: bool | StrSequenceOrSet | None = None, unknown: UnknownOption | None = None) -> Any:
        """`Schema.load`, refusing first what PostgreSQL cannot store, wherever it is in `data`.

        A check before the load rather than a `pre_load` hook: a hook runs in every nested group's
        load too (only to find the flag set), which cost a scraped therapist 17 µs of its 176."""
        if not self.strings_checked_by_parent:
            _refuse_unstorable_strings(data)
        return super().load(data, many=many, partial=partial, unknown=unknown)


def _refuse_unstorable_strings(data: object) -> None:
    # Fast path: one C-level serialisation and search; the walk only runs to name the field.
    # msgspec writes a NUL as \u0000 and refuses an unpaired surrogate (UTF-8 cannot hold it)
    # or a value that is not JSON. Only for plain JSON: webargs' query-string view is no dict.
    if isinstance(data, (dict, list)):
        try:
            if b"\\u0000" not in msgspec.json.encode(data):
                return
        except (UnicodeEncodeError, TypeError):
            pass
    found = _unstorable_strings(data)
    if found:
        raise ValidationError(found if isinstance(found, dict) else {"_schema": found})


class Nested(fields.Nested):
    """A nested `StrictSchema` inside another: the outer one has checked every string in it."""

    def _load(self, value: Any, partial: bool | StrSequenceOrSet | None = None) -> Any:
        schema = self.schema  # made once, then cached by marshmallow
        if isinstance(schema, StrictSchema):
            schema.strings_checked_by_parent = True
        return super()._load(value, partial)


class TrimmedString(fields.String):
    """A string stored without surrounding whitespace; length rules apply after trimming."""

    def _deserialize(self, value: object, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if isinstance(value, str):  # what JSON gives: `String` would only check that and return it
            return value.strip()
        return super()._deserialize(value, attr, data, **kwargs).strip()


class UtcDateTime(fields.DateTime):
    """ISO-8601 date-time; a value without a zone is UTC (SPEC §8.2)."""

    openapi: ClassVar[dict[str, Any]] = {
        SERVER_RULE: "a value without a zone is UTC; it must lie after 0001-01-01T00:00Z in UTC"}

    def _deserialize(self, value: object, attr: str | None, data: Mapping[str, Any] | None,
                     **kwargs: Any) -> datetime:
        result = super()._deserialize(value, attr, data, **kwargs)
        if result.tzinfo is None:
            result = result.replace(tzinfo=UTC)
        try:
            return result.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise ValidationError("is outside the range of supported date-times") from None


def validate_time_range(value: str) -> None:
    """`HH:MM-HH:MM`, the end after the start and at most 24:00."""
    match = _TIME_RANGE.match(value)
    if not match:
        raise ValidationError(f"{value!r} is not a time range HH:MM-HH:MM")
    start_hour, start_minute, end_hour, end_minute = map(int, match.groups())
    start, end = start_hour * 60 + start_minute, end_hour * 60 + end_minute
    if end > 24 * 60 or end <= start:
        raise ValidationError(f"{value!r}: the end must be after the start, at most 24:00")


validate_time_range.openapi = {  # type: ignore[attr-defined]
    "pattern": _TIME_RANGE.pattern,
    SERVER_RULE: "the end is after the start, at most 24:00"}


# Named weekday keys rather than a free-keyed dict: an error points into the document
# (`/zeitliche_verfuegbarkeit/montag/1`), OpenAPI lists the keys, and any other key is unknown (422).
WeeklyHoursSchema = StrictSchema.from_dict(
    {day: fields.List(fields.String(validate=validate_time_range)) for day in WEEKDAYS},
    name="WeeklyHoursSchema")


def weekly_hours(**kwargs: Any) -> Nested:
    """`{"montag": ["09:00-12:00"], ...}` — the shape of patients' and therapists' time slots."""
    return Nested(WeeklyHoursSchema, **kwargs)


POSTCODE = validate.Regexp(r"^[0-9]{5}$", error="must be 5 digits")


def optional_string(**kwargs: Any) -> TrimmedString:
    return TrimmedString(load_default=None, allow_none=True, **kwargs)


def now_utc() -> datetime:
    return datetime.now(UTC)


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

    def _deserialize(self, value: object, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


# ---- how a rule becomes OpenAPI ----------------------------------------------------------------
# Decided here once for every schema: a field class or validator that JSON Schema's built-in
# mapping misses carries an `openapi` dict (merged into the property); the rest is below.

_NO_NUL = "^[^\\x00]*$"
# What `str.strip()` removes, spelled out: `\s` differs between Python and ECMAScript regexes.
WHITESPACE = "".join(f"\\u{c:04x}" for c in range(0x10000) if chr(c).isspace())
_NOT_BLANK = f"^[^\\x00]*[^\\x00{WHITESPACE}][^\\x00]*$"  # a trimmed string: more than whitespace


def openapi_rules(converter: OpenAPIConverter, field: fields.Field[Any], ret: dict[str, Any],
                  **_kwargs: Any) -> dict[str, Any]:
    """apispec attribute function (runs after the built-in ones): the rules of our fields and
    validators that apispec does not translate, written into the property `ret`."""
    for rule in (getattr(field, "openapi", None), *(getattr(v, "openapi", None) for v in field.validators)):
        if rule:
            ret.update(rule)
    if isinstance(field, AnyOfSchemas):
        ret["anyOf"] = [converter.resolve_nested_schema(schema) for schema in field.schemas]
    if any(isinstance(v, validate.Email) for v in field.validators):
        if "anyOf" in ret:  # the field's own branches say the format and the length (`LowercaseEmail`)
            ret.pop("maxLength", None)
        else:
            ret["format"] = "email"
    if SERVER_RULE in ret:
        _describe(ret, f"Also: {ret[SERVER_RULE]}.")
    if (ret.get("type") == "string" and isinstance(field.root, StrictSchema)  # loads input
            and not ({"pattern", "format", "enum"} & ret.keys())):
        # PostgreSQL stores no NUL character (422). A trimmed string with a minimum length must
        # hold more than whitespace (trimming happens before the length rule).
        trimmed_non_empty = isinstance(field, TrimmedString) and ret.get("minLength", 0) >= 1
        ret["pattern"] = _NOT_BLANK if trimmed_non_empty else _NO_NUL
    if isinstance(field, TrimmedString):
        _describe(ret, "Surrounding whitespace is removed before the rules apply.")
    if ret.get("nullable") is None and "anyOf" in ret and {"type": "object", "nullable": True} in ret["anyOf"]:
        # apispec's nullable nested group allows any object in OpenAPI 3.0; say "this group or null".
        ret["allOf"] = [branch for branch in ret.pop("anyOf") if branch != {"type": "object", "nullable": True}]
        ret["nullable"] = True
    return {}


class AnyOfSchemas(fields.Raw):
    """A value one of `schemas` loads, loaded later by whoever consumes it (a batch item, so that one
    bad item is reported as that item's error); documented as `anyOf` those schemas. Not null."""

    def __init__(self, *schemas: type[Schema], **kwargs: Any):
        super().__init__(**kwargs)
        self.schemas = schemas


def _describe(prop: dict[str, Any], sentence: str) -> None:
    """Append a sentence to a property's description."""
    before = prop.get("description", "").rstrip()
    if before and not before.endswith("."):
        before += "."
    prop["description"] = f"{before} {sentence}".lstrip()


class RulesPlugin(MarshmallowPlugin):
    """apispec's marshmallow plugin with `openapi_rules` added to its field conversion."""

    def init_spec(self, spec: APISpec) -> None:
        super().init_spec(spec)
        assert self.converter is not None  # init_spec made it
        self.converter.add_attribute_function(openapi_rules)
