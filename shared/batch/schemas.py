"""Wire shapes of batch requests: the request body, per-item results and stored outcomes."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.schemas import AnyOfSchemas, StrictBoolean, StrictSchema

ACTIONS = ("created", "updated", "unchanged", "ignored_stale", "deleted", "error")
PROBLEMS = {409: "A request with this `Idempotency-Key` is still running",
            413: "More items than `BATCH_MAX_ITEMS`"}


class BatchRequestSchema(StrictSchema):
    items = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, error="must not be empty"))
    mode = fields.String(load_default="transaction", validate=validate.OneOf(("transaction", "batch")))
    dry_run = StrictBoolean(load_default=False, metadata={"description": "JSON `true` or `false`"})


class DeleteItemSchema(StrictSchema):
    op = fields.String(required=True, validate=validate.Equal("delete"))
    id = fields.Integer(required=True, strict=True)


def batch_request_schema(item_schema: type[Schema]) -> type[BatchRequestSchema]:
    """The body of one resource's batch endpoint: `BatchRequestSchema` whose OpenAPI names the
    item shapes (that resource's item, or a delete); each item is still loaded one by one."""
    items = fields.List(AnyOfSchemas(item_schema, DeleteItemSchema), required=True,
                        validate=validate.Length(min=1, error="must not be empty"))
    resource = item_schema.__name__.removesuffix("Schema").removesuffix("BatchItem")
    return type(f"{resource}BatchRequestSchema", (BatchRequestSchema,), {"items": items})


class ItemErrorSchema(StrictSchema):
    pointer = fields.String()
    detail = fields.String()
    type = fields.String()
    # What an item's problem type adds, as a single request's problem would carry it:
    existing_id = fields.Integer(allow_none=True, metadata={"description": "`duplicate`: the record that exists"})
    conflicting_id = fields.String(allow_none=True, metadata={
        "description": "`overlap`: the appointment holding the time (ours, a UUID; null if gone since)"})
    erasure_id = fields.Integer(metadata={"description": "`erased`: the erasure record"})


class ItemResultSchema(StrictSchema):
    index = fields.Integer()
    id = fields.Integer(allow_none=True)
    action = fields.String(validate=validate.OneOf(ACTIONS))
    errors = fields.List(fields.Nested(ItemErrorSchema))


class BatchResponseSchema(StrictSchema):
    results = fields.List(fields.Nested(ItemResultSchema))
    summary = fields.Dict(keys=fields.String(), values=fields.Integer())
    dry_run = fields.Boolean()


class StoredBatchSchema(StrictSchema):
    key = fields.String()
    status = fields.String()
    response_status = fields.Integer(allow_none=True)
    response = fields.Raw(allow_none=True)
    created_at = fields.DateTime()
    expires_at = fields.DateTime()
