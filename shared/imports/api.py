"""`/api/imports…` (SPEC §6.3), mounted by both services; each answers for its own imports."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import current_app
from flask.views import MethodView
from flask_smorest.pagination import PaginationParameters
from marshmallow import fields, validate
from sqlalchemy import select

from shared.db import page_of
from shared.errors import NotFound
from shared.extensions import db
from shared.http import Blueprint, current_principal
from shared.imports.models import STATUSES, ImportRecordMixin
from shared.schemas import StrictSchema

if TYPE_CHECKING:
    from shared.imports.service import ImportsExtension

blp = Blueprint("imports", __name__, url_prefix="/api/imports",
                description="Import records: one per version of each imported file.")


class ImportErrorSchema(StrictSchema):
    index = fields.Integer(allow_none=True)
    ref = fields.String(allow_none=True)
    pointer = fields.String()
    detail = fields.String()
    kind = fields.String()


class ImportCountsSchema(StrictSchema):
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    deleted = fields.Integer()
    ignored_stale = fields.Integer()
    failed = fields.Integer()


class ImportRecordSchema(StrictSchema):
    id = fields.Integer()
    source = fields.String()
    name = fields.Method("_name", metadata={
        "type": "string", "description": "the file's name; in the patient service only with `patients:read` "
                                         "(it holds the patient's name), else the label"})
    label = fields.String(metadata={"description": "names the file without personal data"})
    sha256 = fields.String(allow_none=True)
    size = fields.Integer(allow_none=True)
    generation = fields.Integer(allow_none=True)
    status = fields.String()
    attempts = fields.Integer()
    next_attempt_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    counts = fields.Nested(ImportCountsSchema)
    errors = fields.List(fields.Nested(ImportErrorSchema))
    warnings = fields.List(fields.Nested(ImportErrorSchema))

    def _name(self, record: ImportRecordMixin) -> str:
        scope = _imports().spec.name_scope
        return record.name if scope is None or current_principal().holds(scope) else record.label


class ImportQuerySchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(STATUSES))


class RunRequestedSchema(StrictSchema):
    requested_at = fields.DateTime()
    detail = fields.String()


def _imports() -> ImportsExtension:
    extension: ImportsExtension = current_app.extensions["imports"]
    return extension


def get_record(import_id: int) -> ImportRecordMixin:
    record = db.session.get(_imports().models.record, import_id)
    if record is None:
        raise NotFound(f"import {import_id} does not exist")
    return record


@blp.route("")
class Imports(MethodView):
    @blp.scope("imports:read")
    @blp.arguments(ImportQuerySchema, location="query")
    @blp.response(200, ImportRecordSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=100)
    def get(self, filters: dict[str, Any], pagination_parameters: PaginationParameters) -> list[ImportRecordMixin]:
        """Imports, newest first."""
        Record = _imports().models.record
        query = select(Record)
        if "status" in filters:
            query = query.where(Record.status == filters["status"])
        items, pagination_parameters.item_count = page_of(
            query, order_by=Record.id.desc(), page=pagination_parameters.page,
            page_size=pagination_parameters.page_size)
        return items


@blp.route("/<int:import_id>")
class Import(MethodView):
    @blp.scope("imports:read")
    @blp.response(200, ImportRecordSchema)
    def get(self, import_id: int) -> ImportRecordMixin:
        """One import with its per-item errors and warnings."""
        return get_record(import_id)


@blp.route("/run")
class RunImports(MethodView):
    @blp.scope("imports:operate")
    @blp.response(202, RunRequestedSchema)
    def post(self) -> dict[str, Any]:
        """Poll the bucket or rescan the folder now (whichever worker holds the importer lock does)."""
        requested = _imports().request_run()
        return {"requested_at": requested, "detail": "a pass starts within a few seconds"}


@blp.route("/<int:import_id>/retry")
class RetryImport(MethodView):
    @blp.scope("imports:operate")
    @blp.response(202, ImportRecordSchema)
    @blp.alt_response(409, description="Only failed or quarantined imports can be retried")
    def post(self, import_id: int) -> ImportRecordMixin:
        """Clear a failure or quarantine and try the file again, with a fresh attempt count."""
        return _imports().retry(import_id)

