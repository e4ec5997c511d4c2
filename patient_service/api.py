"""REST endpoints for patients (SPEC §6.1). Each view: loaded arguments in, one service call, result out."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, url_for
from flask.views import MethodView
from flask_smorest.pagination import PaginationParameters

from patient_service import models, privacy, services
from patient_service.models import IdempotencyKey
from patient_service.schemas import (
    AccessLogEntrySchema,
    ConsentSchema,
    ErasureRequestSchema,
    ErasureSchema,
    PatientBatchItemSchema,
    PatientExportSchema,
    PatientQuerySchema,
    PatientSchema,
    RegistrationSchema,
)
from shared import batch
from shared.batch.schemas import batch_request_schema
from shared.db import atomic, unit_of_work
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

blp = Blueprint("patients", __name__, url_prefix="/api/patients",
                description="Patients looking for a therapy place. Health data: responses are never cached.")

DUPLICATE = {409: "Duplicate: `existing_id` names the patient who exists"}
ERASED = {410: "Deleted (type `gone`), or erased (type `erased`, with `erasure_id`)"}


@blp.after_request
def contains_phi(response: Response) -> Response:
    """SPEC §10.5: every answer of this blueprint may carry health data."""
    response.headers["X-Contains-PHI"] = "true"
    return response


def _respond(patient: models.Patient, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`services.representation` is what `PatientSchema` dumps (a test holds the two equal), built
    directly: the schema documents the answer, and is not run for it."""
    return json_answer(services.representation(patient), status,
                       {"ETag": etag_for(patient.id, patient.version), **(headers or {})})


@blp.route("")
class Patients(MethodView):
    @blp.scope("patients:read")
    @blp.arguments(PatientQuerySchema, location="query")
    @blp.response(200, PatientSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=100)
    @atomic
    def get(self, filters: dict[str, Any], pagination_parameters: PaginationParameters) -> list[models.Patient]:
        """List patients (newest id last), filtered. Each patient listed is a read in its access log."""
        items, total = privacy.read_list(filters, page=pagination_parameters.page,
                                         page_size=pagination_parameters.page_size, actor=current_actor())
        pagination_parameters.item_count = total
        return items

    @blp.scope("patients:write")
    @blp.arguments(PatientSchema)
    @blp.response(201, PatientSchema)
    @blp.problems(400, 409, 413, descriptions=DUPLICATE)
    @atomic
    def post(self, data: dict[str, Any]) -> Response:
        """Create a patient."""
        patient = services.create_patient(data, source="api", actor=current_actor())
        return _respond(patient, 201, {"Location": url_for("patients.Patient", patient_id=patient.id)})


@blp.route("/<int:patient_id>")
class Patient(MethodView):
    @blp.scope("patients:read")
    @blp.arguments(AsOfQuerySchema, location="query")
    @blp.response(200, PatientSchema)
    @blp.problems(404, 410, descriptions=ERASED)
    @atomic
    def get(self, args: dict[str, Any], patient_id: int) -> Response:
        """Read a patient; with `?at=` as it was then."""
        if "at" in args:
            return as_stored(privacy.read_patient_as_of(patient_id, args["at"], actor=current_actor()))
        return _respond(privacy.read_patient(patient_id, actor=current_actor()))

    @blp.scope("patients:write")
    @blp.arguments(PatientSchema)
    @blp.response(200, PatientSchema)
    @blp.problems(400, 404, 409, 410, 412, 413, descriptions=DUPLICATE)
    @atomic
    def put(self, data: dict[str, Any], patient_id: int) -> Response:
        """Replace a patient. Honours `If-Match`."""
        return _respond(services.replace_patient(
            patient_id, data, expected_versions=expected_versions(patient_id),
            source="api", actor=current_actor()))

    @blp.scope("patients:write")
    @blp.arguments(PatientSchema(partial=True))
    @blp.response(200, PatientSchema)
    @blp.problems(400, 404, 409, 410, 412, 413, descriptions=DUPLICATE)
    @atomic
    def patch(self, changes: dict[str, Any], patient_id: int) -> Response:
        """Change some fields of a patient. Honours `If-Match`."""
        return _respond(services.patch_patient(
            patient_id, changes, expected_versions=expected_versions(patient_id),
            source="api", actor=current_actor()))

    @blp.scope("patients:write")
    @blp.response(204)
    @blp.problems(404, 410, 412)
    @atomic
    def delete(self, patient_id: int) -> None:
        """Soft-delete a patient: later reads answer 410. Honours `If-Match`."""
        services.delete_patient(patient_id, expected_versions=expected_versions(patient_id),
                                source="api", actor=current_actor())


@blp.route("/<int:patient_id>/history")
class PatientHistory(MethodView):
    @blp.scope("patients:read")
    @blp.response(200, VersionSchema(many=True))
    @blp.problems(404, 410, descriptions=ERASED)
    @atomic
    def get(self, patient_id: int) -> list[models.PatientVersion]:
        """Every version of a patient, newest first."""
        return privacy.read_history(patient_id, actor=current_actor())


@blp.route("/<int:patient_id>/consents")
class PatientConsents(MethodView):
    @blp.scope("patients:read")
    @blp.response(200, ConsentSchema(many=True))
    @blp.problems(404, 410, descriptions=ERASED)
    @atomic
    def get(self, patient_id: int) -> list[models.Consent]:
        """The patient's consent records, each with the registration's `consent_metadata` in full."""
        return privacy.read_consents(patient_id, actor=current_actor())


@blp.route("/<int:patient_id>/registrations")
class PatientRegistrations(MethodView):
    @blp.scope("patients:read")
    @blp.response(200, RegistrationSchema(many=True))
    @blp.problems(404, 410, descriptions=ERASED)
    @atomic
    def get(self, patient_id: int) -> list[models.Registration]:
        """The registrations (bucket files) that created or updated this patient."""
        return privacy.read_registrations(patient_id, actor=current_actor())


@blp.route("/<int:patient_id>/erasure")
class PatientErasure(MethodView):
    @blp.scope("patients:erase")
    @blp.arguments(ErasureRequestSchema)
    @blp.response(200, ErasureSchema)
    @blp.problems(400, 404, 410, 412, descriptions=ERASED)
    def post(self, body: dict[str, Any], patient_id: int) -> models.Erasure:
        """Erase a patient (GDPR Art. 17): the record, its versions, consents and registrations, the
        stored answers of idempotent batches that named it, its name in import records, and the
        backup copies of its files. Honours `If-Match`. The answer is the erasure record, which holds
        no personal data; later reads of the id answer 410 `erased`."""
        backup_dir = current_app.extensions["settings"].PATIENT_IMPORT_BACKUP_DIR
        with unit_of_work():  # the database part commits before any backup copy is deleted
            erasure_id = privacy.erase_patient(patient_id, reason=body["reason"], actor=current_actor(),
                                               expected_versions=expected_versions(patient_id),
                                               backup_dir=backup_dir).id
        return privacy.delete_erased_backups(erasure_id, backup_dir)


@blp.route("/<int:patient_id>/export")
class PatientExport(MethodView):
    @blp.scope("patients:export")
    @blp.response(200, PatientExportSchema, headers={"Content-Disposition": {
        "description": 'attachment; filename="patient-<id>-export.json"', "schema": {"type": "string"}}})
    @blp.problems(404, 410, descriptions=ERASED)
    @atomic
    def get(self, patient_id: int) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Everything stored about a patient (GDPR Art. 15, 20), as a file to hand to the person:
        the record, its versions, consents, registrations, import records and access log."""
        export = privacy.export(patient_id, actor=current_actor())
        return export, 200, {"Content-Disposition": f'attachment; filename="patient-{patient_id}-export.json"'}


@blp.route("/<int:patient_id>/access-log")
class PatientAccessLog(MethodView):
    @blp.scope("patients:audit")
    @blp.response(200, AccessLogEntrySchema(many=True))
    @blp.paginate(page_size=50, max_page_size=100)
    @blp.problems(404)
    def get(self, patient_id: int, pagination_parameters: PaginationParameters) -> list[models.AccessLogEntry]:
        """Who read this patient's data, when, and what (newest first). Ids, actors and times
        only; kept `ACCESS_LOG_RETENTION_DAYS`, also after an erasure."""
        entries, total = privacy.access_log(patient_id, page=pagination_parameters.page,
                                            page_size=pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return entries


BATCH = batch.BatchAdapter(item_schema=PatientBatchItemSchema(), upsert=services.upsert_patient,
                           delete=services.delete_patient, key_model=IdempotencyKey,
                           prepare=services.prepare_batch, finish=services.finish_batch)


@blp.route("/batch")
class PatientBatch(MethodView):
    @blp.scope("patients:write")
    @blp.arguments(batch_request_schema(PatientBatchItemSchema))
    @blp.response(200, batch.BatchResponseSchema)
    @blp.alt_response(201, schema=batch.BatchResponseSchema, description="At least one patient was created")
    @blp.alt_response(204, description="`Prefer: return=minimal` and nothing was created")
    @blp.problems(400, 409, 413, descriptions=batch.PROBLEMS)
    def post(self, body: dict[str, Any]) -> Response:
        """Create, update or delete many patients at once; see docs/api.md (*Batch requests*) for
        modes, dry runs and `Idempotency-Key`. An item with `id` updates that patient; without, the duplicate
        rule decides between update and create."""
        return batch.handle(BATCH, body, principal=current_principal())
