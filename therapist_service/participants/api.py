"""REST endpoints for appointment participants (SPEC §6.6). Each view: headers and loaded
arguments in, one service call, result out."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from flask.views import MethodView
from flask_smorest.pagination import PaginationParameters

from shared import batch
from shared.errors import UPSTREAM_VALIDATION_STATUS
from shared.http import Blueprint, current_actor, etag_for
from shared.schemas import VersionSchema
from therapist_service.models import IdempotencyKey
from therapist_service.participants import models, services
from therapist_service.participants.schemas import (
    ParticipantBatchResultSchema,
    ParticipantBatchSchema,
    ParticipantQuerySchema,
    ParticipantSchema,
)

blp = Blueprint("participants", __name__, url_prefix="/api/appointments/participants",
                description="People taking part in appointments and events, sent in batches by an upstream job.")

REPRESENTATION = "return=representation"
PROBLEMS = {**batch.PROBLEMS,
            400: "The body is not JSON, or fails validation (as the participants upstream says: 400, not 422): "
                 "no or an empty `participants`, more than `BATCH_MAX_ITEMS`, unknown fields, or an invalid item "
                 "(nothing written; one error per failed item, `mid-conflict` for a MID another participant "
                 "holds, `/participants/<i>/…` pointers)",
            422: "A reused `Idempotency-Key` (with another body), or an `Idempotency-Key` that cannot be stored"}
INVALID_EXAMPLE = {"type": "validation-error", "title": "Invalid batch", "status": 400,
                   "detail": "1 of 2 items failed; nothing was written",
                   "errors": [{"pointer": "/participants/1/participantId", "detail": "Missing data for required field.",
                               "index": 1, "type": "validation-error"}]}


@blp.route("")
class Participants(MethodView):
    @blp.scope("participants:read")
    @blp.arguments(ParticipantQuerySchema, location="query")
    @blp.response(200, ParticipantSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=100)
    def get(self, filters: dict[str, Any], pagination_parameters: PaginationParameters) -> list[models.Participant]:
        """List participants, filtered by `mid`, `email`, `eventId` (of their metadata)."""
        items, total = services.list_participants(filters, page=pagination_parameters.page,
                                                  page_size=pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return items

    @blp.scope("participants:write")
    @blp.arguments(ParticipantBatchSchema, error_status_code=UPSTREAM_VALIDATION_STATUS)
    @blp.response(201, description="At least one participant was created")
    @blp.alt_response(204, description="Nothing was created (matched participants may have changed)")
    @blp.alt_response(200, schema=ParticipantBatchResultSchema,
                      description="`Prefer: return=representation` and nothing was created (201 carries it too)")
    @blp.problems(400, 409, 422, descriptions=PROBLEMS, examples={400: INVALID_EXAMPLE})
    def post(self, body: dict[str, Any]) -> Response:
        """Create or update participants in one transaction, matched by id or alias, else by first name,
        last name and e-mail. `Idempotency-Key` / `X-Request-ID` replay as for batch requests."""
        outcome = services.receive_batch(
            body, actor=current_actor(), key=batch.idempotency_key(), keys=batch.idempotency_store(IdempotencyKey),
            path=request.path, max_items=current_app.extensions["settings"].BATCH_MAX_ITEMS)
        wanted = batch.prefers(REPRESENTATION)
        return batch.respond(outcome, with_body=wanted,
                             preference_applied=REPRESENTATION if wanted and outcome.status < 400 else None)


@blp.route("/<participant_id>")
class Participant(MethodView):
    @blp.scope("participants:read")
    @blp.response(200, ParticipantSchema)
    @blp.problems(404)
    def get(self, participant_id: str) -> tuple[models.Participant, int, dict[str, str]]:
        """Read a participant by its `participantId` or an alias."""
        participant = services.get_participant(participant_id)
        return participant, 200, {"ETag": etag_for(participant.id, participant.version)}


@blp.route("/<participant_id>/history")
class ParticipantHistory(MethodView):
    @blp.scope("participants:read")
    @blp.response(200, VersionSchema(many=True))
    @blp.problems(404)
    def get(self, participant_id: str) -> list[models.ParticipantVersion]:
        """Every version of a participant, newest first."""
        return services.participant_history(participant_id)
