"""Wire shapes of participants (SPEC §6.6): the batch sent upstream, one participant in it, the
representation read back, and the query of the list. camelCase on the wire, snake_case inside."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from marshmallow import ValidationError, fields, pre_load, validate

from shared.schemas import SERVER_RULE, WHITESPACE, AnyOfSchemas, StrictSchema, TrimmedString
from therapist_service.participants.models import ID_LENGTH, Participant

MID_KEYS = ("mid", "MID", "mId")


class OptionalText(TrimmedString):
    """Trimmed; blank counts as not sent (a blank name identifies nobody)."""

    # Wider than `TrimmedString`'s `str`: a blank string loads as None, as a null would.
    def _deserialize(self, value: object, attr: str | None, data: Mapping[str, Any] | None,  # type: ignore[override]
                     **kwargs: Any) -> str | None:
        if type(value) is str:  # what JSON sends: trimmed here, without the three calls of the general path
            return value.strip() or None
        return super()._deserialize(value, attr, data, **kwargs) or None

    def _validate(self, value: str | None) -> None:
        if value is not None:  # blank became None: there is nothing left to check
            super()._validate(value)


class LowercaseEmail(OptionalText):
    """An address (at most 320 characters), or blank — read as no address, whatever its length:
    documented as exactly that."""

    openapi: ClassVar[dict[str, Any]] = {
        "anyOf": [{"format": "email", "maxLength": 320}, {"pattern": f"^[{WHITESPACE}]*$"}]}

    # As `OptionalText`'s: blank loads as None.
    def _deserialize(self, value: object, attr: str | None, data: Mapping[str, Any] | None,  # type: ignore[override]
                     **kwargs: Any) -> str | None:
        result = super()._deserialize(value, attr, data, **kwargs)
        return result.lower() if result is not None else None


def _optional(max_length: int = 200, **kwargs: Any) -> OptionalText:
    return OptionalText(allow_none=True, validate=validate.Length(max=max_length), **kwargs)


SAME_MID = "another spelling of the MID sent in the same item must hold the same value"
ONE_HOLDER = "a MID another participant holds is an item error (`mid-conflict`)"
ONE_IDENTITY = ("first name, last name and e-mail name one participant: a change that would give one "
                "another's is an item error (`identity-conflict`)")


class ParticipantItemSchema(StrictSchema):
    """One participant of a batch. The MID may come as `mid`, `MID` or `mId`."""

    # True on the instance the batch loads its items with: the batch's schema has checked every
    # string in them for what PostgreSQL cannot store (`StrictSchema`), once for the whole body.
    strings_checked_by_parent = False

    participant_id = fields.String(data_key="participantId", required=True,
                                   validate=validate.Length(min=1, max=ID_LENGTH))
    first_name = _optional(data_key="firstName")
    last_name = _optional(data_key="lastName")
    email = LowercaseEmail(allow_none=True, validate=[validate.Length(max=320), validate.Email()],
                           metadata={SERVER_RULE: ONE_IDENTITY})
    phone = _optional(max_length=100)
    mid = _optional(max_length=ID_LENGTH, metadata={"description": "The member id; also accepted as `MID` or `mId`",
                                                     SERVER_RULE: f"{ONE_HOLDER}; {SAME_MID}"})
    # Documented spellings only: `_one_mid` has made them `mid` before the fields load.
    mid_upper = _optional(max_length=ID_LENGTH, data_key="MID",
                          metadata={"description": "`mid` spelled otherwise", SERVER_RULE: f"{ONE_HOLDER}; {SAME_MID}"})
    mid_camel = _optional(max_length=ID_LENGTH, data_key="mId",
                          metadata={"description": "`mid` spelled otherwise", SERVER_RULE: f"{ONE_HOLDER}; {SAME_MID}"})
    username = _optional()
    attendance_status = _optional(data_key="attendanceStatus", max_length=100)
    meta = fields.Dict(data_key="metadata", allow_none=True, metadata={
        "description": "Kept as sent", SERVER_RULE: "no key or string in it holds a NUL character or an unpaired "
                                                    "surrogate (PostgreSQL cannot store them)"})

    @pre_load
    def _one_mid(self, data: object, **_kwargs: Any) -> object:
        """`MID` and `mId` are `mid` spelled otherwise; two spellings with different values are an error."""
        if not isinstance(data, dict) or not any(key in data for key in MID_KEYS[1:]):
            return data
        sent = [key for key in MID_KEYS if key in data]
        values = {key: data[key] for key in sent}
        for key in sent[1:]:
            if values[key] != values[sent[0]]:
                raise ValidationError({key: [f"differs from `{sent[0]}`: send the MID once"]})
        data = {key: value for key, value in data.items() if key not in MID_KEYS}
        data["mid"] = values[sent[0]]
        return data


class ParticipantBatchSchema(StrictSchema):
    """`POST /api/appointments/participants`: who sent it, and the participants."""

    batch_id = fields.String(data_key="batchId", allow_none=True, validate=validate.Length(max=200))
    source = fields.String(allow_none=True, validate=validate.Length(max=200))
    participants = fields.List(AnyOfSchemas(ParticipantItemSchema), required=True,
                               validate=validate.Length(min=1, error="must not be empty"),
                               metadata={"description": "1 to `BATCH_MAX_ITEMS` participants"})


class ParticipantSchema(StrictSchema):
    """A participant as read back (and as stored in its versions)."""

    participant_id = fields.String(attribute="id", data_key="participantId")
    aliases = fields.Method("_aliases", metadata={"description": "other ids sent for this participant"})
    first_name = fields.String(data_key="firstName", allow_none=True)
    last_name = fields.String(data_key="lastName", allow_none=True)
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    mid = fields.String(allow_none=True)
    username = fields.String(allow_none=True)
    attendance_status = fields.String(data_key="attendanceStatus", allow_none=True)
    meta = fields.Dict(data_key="metadata", allow_none=True)
    batch_id = fields.String(data_key="batchId", allow_none=True)
    source = fields.String(allow_none=True)
    version = fields.Integer()
    created_at = fields.DateTime(data_key="createdAt")
    updated_at = fields.DateTime(data_key="updatedAt")

    def _aliases(self, participant: Participant) -> list[str]:
        ordered = sorted(participant.aliases, key=lambda alias: (alias.created_at, alias.alias))
        return [alias.alias for alias in ordered if alias.alias != participant.id]


class ParticipantQuerySchema(StrictSchema):
    mid = fields.String()
    email = fields.String()
    event_id = fields.String(data_key="eventId")


class ParticipantResultSchema(StrictSchema):
    index = fields.Integer()
    id = fields.String(allow_none=True, metadata={"description": "the participant's own `participantId`"})
    action = fields.String(validate=validate.OneOf(("created", "updated", "unchanged", "error")))
    errors = fields.List(fields.Dict())


class ParticipantBatchResultSchema(StrictSchema):
    """With `Prefer: return=representation`."""

    results = fields.List(fields.Nested(ParticipantResultSchema))
    summary = fields.Dict(keys=fields.String(), values=fields.Integer())
    dry_run = fields.Boolean()
