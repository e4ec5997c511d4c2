"""The appointment wire format of SPEC §6.5 (the upstream calendar API's, camelCase): the body of
`POST /api/appointments` and of batch items, the representation, and the list's query."""
from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from shared.batch import BatchRequestSchema, BatchResponseSchema, ItemResultSchema
from shared.schemas import SERVER_RULE, AnyOfSchemas, StrictSchema, TrimmedString, UtcDateTime


class AppointmentWriteSchema(StrictSchema):
    """One appointment as the calendar pushes it; `id` is the upstream's, stored as `external_id`."""

    external_id = TrimmedString(data_key="id", required=True, validate=validate.Length(1, 200),
                                metadata={"description": "the calendar's id, unique within `orgId`"})
    org_id = TrimmedString(data_key="orgId", validate=validate.Length(1, 100),
                           metadata={"description": "the practice; without it the credential's own organisation "
                                                    "(`default` for a credential bound to none)"})
    start = UtcDateTime(required=True)
    end = UtcDateTime(required=True, metadata={"description": "the range is half-open [start, end)",
                                               SERVER_RULE: "`end` is after `start` (400, pointer `/end`)"})
    payload_created_at = UtcDateTime(data_key="createdAt", load_default=None, allow_none=True)
    payload_updated_at = UtcDateTime(data_key="updatedAt", required=True,
                                     metadata={"description": "latest wins: not newer than the stored one is ignored"})

    @validates_schema
    def _end_after_start(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "start" in data and "end" in data and data["end"] <= data["start"]:
            raise ValidationError("must be after start", field_name="end")


class AppointmentSchema(StrictSchema):
    """The representation (list, read, history `data`), built by `services.representation`; times
    are UTC as `YYYY-MM-DDTHH:MM:SS.sssZ`. Fields carry their wire names: it only dumps."""

    id = fields.String(metadata={"format": "uuid", "description": "ours"})
    orgId = fields.String()
    externalId = fields.String()
    start = fields.String(metadata={"format": "date-time"})
    end = fields.String(metadata={"format": "date-time"})
    payloadCreatedAt = fields.String(allow_none=True, metadata={"format": "date-time"})
    payloadUpdatedAt = fields.String(metadata={"format": "date-time"})
    version = fields.Integer()


class WriteResultSchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(("ok", "ignored-stale")))
    id = fields.String(metadata={"format": "uuid", "description": "ours; absent when ignored"})
    version = fields.Integer()


class AppointmentQuerySchema(StrictSchema):
    org = TrimmedString(validate=validate.Length(1, 100),
                        metadata={"description": "the practice (`orgId`); without it the credential's own "
                                                 "organisation (`default` for a credential bound to none)"})
    at = UtcDateTime(metadata={"description": "the organisation's appointments as they were at this instant"})
    window_from = UtcDateTime(data_key="from", metadata={"description": "keep those ending after this"})
    window_to = UtcDateTime(data_key="to", metadata={"description": "keep those starting before this"})


class AppointmentBatchRequestSchema(BatchRequestSchema):
    """The shared batch body whose items are appointments (each loaded on its own: a bad one is
    that item's error); appointments are cancelled one by one, so there are no delete items."""

    items = fields.List(AnyOfSchemas(AppointmentWriteSchema), required=True,
                        validate=validate.Length(min=1, error="must not be empty"))


class AppointmentItemResultSchema(ItemResultSchema):
    id = fields.String(allow_none=True,  # type: ignore[assignment]  # a UUID, where the shared shape has a number
                       metadata={"format": "uuid", "description": "the appointment, ours"})


class AppointmentBatchResponseSchema(BatchResponseSchema):
    """The shared batch answer, whose item ids are UUIDs here."""

    results = fields.List(fields.Nested(AppointmentItemResultSchema))
