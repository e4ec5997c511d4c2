"""REST endpoints for appointments (SPEC §6.5). Each view: loaded arguments in, one service call, result out."""
from __future__ import annotations

import uuid
from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest.pagination import PaginationParameters

from shared import batch
from shared.db import atomic
from shared.errors import UPSTREAM_VALIDATION_STATUS
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
from therapist_service.appointments import services
from therapist_service.appointments.models import AppointmentVersion
from therapist_service.appointments.schemas import (
    AppointmentBatchRequestSchema,
    AppointmentBatchResponseSchema,
    AppointmentQuerySchema,
    AppointmentSchema,
    AppointmentWriteSchema,
    WriteResultSchema,
)
from therapist_service.models import IdempotencyKey

blp = Blueprint("appointments", __name__, url_prefix="/api/appointments",
                description="Appointments pushed by practice calendars: latest `updatedAt` wins, "
                            "no two active appointments of one organisation overlap.")

INVALID = {400: "The body is not JSON, or fails validation (as the upstream calendar API says: 400, not 422): "
                "unknown fields, a bad date, `end` not after `start`, a required field missing; `errors` has "
                "one pointer per problem"}
INVALID_EXAMPLE = {"type": "validation-error", "title": "Invalid data", "status": 400,
                   "detail": "validation failed for /end",
                   "errors": [{"pointer": "/end", "detail": "must be after start"}]}
OVERLAP = {409: "`overlap`: the time is taken by another active appointment of the organisation, "
                "named by `conflicting_id`"}


@blp.route("")
class Appointments(MethodView):
    @blp.scope("appointments:read")
    @blp.arguments(AppointmentQuerySchema, location="query")
    @blp.response(200, AppointmentSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=100)
    def get(self, filters: dict[str, Any], pagination_parameters: PaginationParameters) -> list[dict[str, Any]]:
        """An organisation's appointments ordered by start: now, or with `at` as they were then."""
        items, total = services.list_appointments(filters, page=pagination_parameters.page,
                                                  page_size=pagination_parameters.page_size,
                                                  org=current_principal().org)
        pagination_parameters.item_count = total
        return items

    @blp.scope("appointments:write")
    @blp.arguments(AppointmentWriteSchema, error_status_code=UPSTREAM_VALIDATION_STATUS)
    @blp.response(200, WriteResultSchema, description="Updated, or `ignored-stale` (nothing written)")
    @blp.alt_response(201, schema=WriteResultSchema, description="Created")
    @blp.problems(400, 409, 413, descriptions={**INVALID, **OVERLAP}, examples={400: INVALID_EXAMPLE})
    def post(self, data: dict[str, Any]) -> Response:
        """Create or update the appointment (`orgId`, `id`); `updatedAt` not newer than the stored one is ignored.
        A credential bound to an organisation writes its own only (403 `wrong-organisation`)."""
        # A transaction of its own (not `@atomic`): two round trips, no ORM session (ADR 0017).
        appointment, action = services.write_appointment(data, source="api", actor=current_actor(),
                                                         org=current_principal().org)
        if action == services.IGNORED_STALE:
            return json_answer({"status": "ignored-stale"})
        headers = {"ETag": etag_for(appointment.id, appointment.version)}
        if action == services.CREATED:
            # `url_for("appointments.Appointment", …)`, written out: building a URL adapter per request
            # was a fiftieth of a write's time (bench/api_write.py).
            headers["Location"] = f"{request.script_root}{blp.url_prefix}/{appointment.id}"
        body = {"status": "ok", "id": str(appointment.id), "version": appointment.version}
        return json_answer(body, 201 if action == services.CREATED else 200, headers)


@blp.route("/<uuid:appointment_id>")
class Appointment(MethodView):
    @blp.scope("appointments:read")
    @blp.arguments(AsOfQuerySchema, location="query")
    @blp.response(200, AppointmentSchema)
    @blp.problems(404, 410)
    def get(self, args: dict[str, Any], appointment_id: uuid.UUID) -> Response | tuple[dict[str, Any], int, dict[str, str]]:
        """Read an appointment (410 once cancelled); with `?at=` as it was then."""
        if "at" in args:
            return as_stored(services.get_appointment_as_of(appointment_id, args["at"], org=current_principal().org))
        appointment = services.get_appointment(appointment_id, org=current_principal().org)
        return services.representation(appointment), 200, {"ETag": etag_for(appointment.id, appointment.version)}

    @blp.scope("appointments:write")
    @blp.response(204)
    @blp.problems(404, 410, 412)
    @atomic
    def delete(self, appointment_id: uuid.UUID) -> None:
        """Cancel an appointment: its time is free again, reads answer 410. Honours `If-Match`."""
        services.cancel_appointment(appointment_id, expected_versions=expected_versions(appointment_id),
                                    source="api", actor=current_actor(), org=current_principal().org)


@blp.route("/<uuid:appointment_id>/history")
class AppointmentHistory(MethodView):
    @blp.scope("appointments:read")
    @blp.response(200, VersionSchema(many=True))
    @blp.problems(404)
    def get(self, appointment_id: uuid.UUID) -> list[AppointmentVersion]:
        """Every version of an appointment, newest first."""
        return services.appointment_history(appointment_id, org=current_principal().org)


_batch_item_schema = AppointmentWriteSchema()
# The batch request's schema has looked at every string of every item already (one serialisation
# of the body); each item's own look repeated it item by item.
_batch_item_schema.strings_checked_by_parent = True

BATCH = batch.BatchAdapter(item_schema=_batch_item_schema, upsert=services.upsert_batch_item,
                           delete=None, key_model=IdempotencyKey, prepare=services.prepare_batch,
                           finish=services.finish_batch, bind=services.bind_organisation)


@blp.route("/batch")
class AppointmentBatch(MethodView):
    @blp.scope("appointments:write")
    @blp.arguments(AppointmentBatchRequestSchema)
    @blp.response(200, AppointmentBatchResponseSchema)
    @blp.alt_response(201, schema=AppointmentBatchResponseSchema, description="At least one appointment was created")
    @blp.alt_response(204, description="`Prefer: return=minimal` and nothing was created")
    @blp.problems(400, 409, 413, descriptions=batch.PROBLEMS)
    def post(self, body: dict[str, Any]) -> Response:
        """Create or update many appointments at once, each as `POST /api/appointments` would:
        per item `created`, `updated`, `ignored_stale`, or an error (an `overlap` names the
        appointment holding the time, which may be an earlier item of the same batch)."""
        return batch.handle(BATCH, body, principal=current_principal())
