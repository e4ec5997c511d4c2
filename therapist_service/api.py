"""REST endpoints for therapists (SPEC §6.2). Each view: loaded arguments in, one service call, result out."""
from __future__ import annotations

from typing import Any

from flask import Response, url_for
from flask.views import MethodView
from flask_smorest.pagination import PaginationParameters

from shared import batch
from shared.batch.schemas import batch_request_schema
from shared.db import atomic
from shared.http import (
    Blueprint,
    as_stored,
    current_actor,
    current_principal,
    etag_for,
    expected_versions,
    json_answer,
)
from shared.schemas import AsOfQuerySchema, VersionSchema
from therapist_service import models, services
from therapist_service.models import IdempotencyKey
from therapist_service.schemas import TherapistQuerySchema, TherapistSchema

blp = Blueprint("therapists", __name__, url_prefix="/api/therapists",
                description="Therapists and their practice data, mostly from the weekly scrape.")

DUPLICATE = {409: "`external_id` is taken: `existing_id` names the therapist"}
CONFLICT = {409: "`stale-update`: `last_modified` is not newer than the stored one; or `external_id` is taken"}


def _respond(therapist: models.Therapist, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`services.representation` is what `TherapistSchema` dumps (a test holds the two equal), built
    directly: the schema documents the answer, and is not run for it."""
    return json_answer(services.representation(therapist), status,
                       {"ETag": etag_for(therapist.id, therapist.version), **(headers or {})})


@blp.route("")
class Therapists(MethodView):
    @blp.scope("therapists:read")
    @blp.arguments(TherapistQuerySchema, location="query")
    @blp.response(200, TherapistSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=100)
    def get(self, filters: dict[str, Any], pagination_parameters: PaginationParameters) -> list[models.Therapist]:
        """List therapists, filtered."""
        items, total = services.list_therapists(filters, page=pagination_parameters.page,
                                                page_size=pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return items

    @blp.scope("therapists:write")
    @blp.arguments(TherapistSchema)
    @blp.response(201, TherapistSchema)
    @blp.problems(400, 409, 413, descriptions=DUPLICATE)
    @atomic
    def post(self, data: dict[str, Any]) -> Response:
        """Create a therapist."""
        therapist = services.create_therapist(data, source="api", actor=current_actor())
        return _respond(therapist, 201, {"Location": url_for("therapists.Therapist", therapist_id=therapist.id)})


@blp.route("/<int:therapist_id>")
class Therapist(MethodView):
    @blp.scope("therapists:read")
    @blp.arguments(AsOfQuerySchema, location="query")
    @blp.response(200, TherapistSchema)
    @blp.problems(404, 410)
    def get(self, args: dict[str, Any], therapist_id: int) -> Response:
        """Read a therapist; with `?at=` as it was then."""
        if "at" in args:
            return as_stored(services.get_therapist_as_of(therapist_id, args["at"]))
        return _respond(services.get_therapist(therapist_id))

    @blp.scope("therapists:write")
    @blp.arguments(TherapistSchema)
    @blp.response(200, TherapistSchema)
    @blp.problems(400, 404, 409, 410, 412, 413, descriptions=CONFLICT)
    @atomic
    def put(self, data: dict[str, Any], therapist_id: int) -> Response:
        """Replace a therapist. Honours `If-Match`; latest `last_modified` wins."""
        return _respond(services.replace_therapist(
            therapist_id, data, expected_versions=expected_versions(therapist_id),
            source="api", actor=current_actor()))

    @blp.scope("therapists:write")
    @blp.arguments(TherapistSchema(partial=True))
    @blp.response(200, TherapistSchema)
    @blp.problems(400, 404, 409, 410, 412, 413, descriptions=CONFLICT)
    @atomic
    def patch(self, changes: dict[str, Any], therapist_id: int) -> Response:
        """Change some fields; a group sent is merged key by key. Honours `If-Match`."""
        return _respond(services.patch_therapist(
            therapist_id, changes, expected_versions=expected_versions(therapist_id),
            source="api", actor=current_actor()))

    @blp.scope("therapists:write")
    @blp.response(204)
    @blp.problems(404, 410, 412)
    @atomic
    def delete(self, therapist_id: int) -> None:
        """Soft-delete a therapist: later reads answer 410. Honours `If-Match`."""
        services.delete_therapist(therapist_id, expected_versions=expected_versions(therapist_id),
                                  source="api", actor=current_actor())


@blp.route("/<int:therapist_id>/history")
class TherapistHistory(MethodView):
    @blp.scope("therapists:read")
    @blp.response(200, VersionSchema(many=True))
    @blp.problems(404)
    def get(self, therapist_id: int) -> list[models.TherapistVersion]:
        """Every version of a therapist, newest first."""
        return services.therapist_history(therapist_id)


BATCH = batch.BatchAdapter(item_schema=TherapistSchema(), upsert=services.upsert_therapist,
                           delete=services.delete_therapist, key_model=IdempotencyKey)


@blp.route("/batch")
class TherapistBatch(MethodView):
    @blp.scope("therapists:write")
    @blp.arguments(batch_request_schema(TherapistSchema))
    @blp.response(200, batch.BatchResponseSchema)
    @blp.alt_response(201, schema=batch.BatchResponseSchema, description="At least one therapist was created")
    @blp.alt_response(204, description="`Prefer: return=minimal` and nothing was created")
    @blp.problems(400, 409, 413, descriptions=batch.PROBLEMS)
    def post(self, body: dict[str, Any]) -> Response:
        """Create, update or delete many therapists at once, matched on `external_id`;
        latest `last_modified` wins. See docs/api.md (*Batch requests*) for modes, dry runs
        and `Idempotency-Key`."""
        return batch.handle(BATCH, body, principal=current_principal())
