"""The HTTP edge of batch requests: read the headers and settings, call the runner, turn its
outcome into a response; and `GET /api/batches/<key>`, the stored outcome of a keyed batch."""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from flask import Response, current_app, request
from flask.views import MethodView

from shared.auth import Principal, require_scope, required_scopes
from shared.batch.idempotency import IdempotencyStore, Outcome, checked_key, stored_outcome
from shared.batch.runner import BatchAdapter, run_batch
from shared.batch.schemas import StoredBatchSchema
from shared.http import Blueprint, current_actor


def idempotency_key() -> str | None:
    """`Idempotency-Key`, or `X-Request-ID` which counts as the same (422 for one we cannot store)."""
    return checked_key(request.headers.get("Idempotency-Key") or request.headers.get("X-Request-ID"))


def prefers(preference: str) -> bool:
    """Whether the `Prefer` header asks for `preference` (e.g. `return=minimal`)."""
    asked = request.headers.get("Prefer", "").replace(" ", "").split(",")
    return preference in (part.split(";")[0] for part in asked)


def idempotency_store(key_model: type) -> IdempotencyStore:
    return IdempotencyStore(key_model, timedelta(hours=current_app.extensions["settings"].IDEMPOTENCY_TTL_HOURS))


def respond(outcome: Outcome, *, with_body: bool, preference_applied: str | None = None) -> Response:
    """The outcome as a response; without its body (201, else 204) when a success is to be sent bare."""
    if with_body or outcome.status >= 400:
        response = Response(json.dumps(outcome.body), status=outcome.status,
                            mimetype=outcome.headers.get("Content-Type", "application/json"))
    else:
        response = Response(status=201 if outcome.status == 201 else 204)
    if preference_applied:
        response.headers["Preference-Applied"] = preference_applied
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def handle(adapter: BatchAdapter, body: dict[str, Any], *, principal: Principal) -> Response:
    """`POST /api/<things>/batch` for a service's adapter; see *Batch requests* in docs/api.md."""
    minimal = prefers("return=minimal")
    outcome = run_batch(adapter, body["items"], mode=body["mode"], dry_run=body["dry_run"], actor=principal.name,
                        org=principal.org,
                        key=idempotency_key(), keys=idempotency_store(adapter.key_model), path=request.path,
                        body=body, max_items=current_app.extensions["settings"].BATCH_MAX_ITEMS)
    applied = "return=minimal" if minimal and outcome.status < 400 else None
    return respond(outcome, with_body=not minimal, preference_applied=applied)


# The scopes of the routes that store batches: `GET /api/batches/<key>` needs the one of the route
# that wrote it (`write_scope_of`); holding none of them, a credential cannot have stored any.
BATCH_WRITE_SCOPES = ("patients:write", "therapists:write", "appointments:write", "participants:write")


def write_scope_of(path: str) -> str:
    """The scope the route at `path` declares for POST: what a batch stored from there needs."""
    endpoint, _ = current_app.url_map.bind("localhost").match(path, method="POST")
    scopes = required_scopes(current_app, endpoint, "POST")
    assert scopes, f"{path} declares no scope"  # check_route_scopes makes sure it does
    return scopes[0]


def make_batches_blueprint() -> Blueprint:
    blp = Blueprint("batches", __name__, url_prefix="/api/batches",
                    description="Stored outcomes of batch requests sent with an Idempotency-Key.")

    @blp.route("/<path:key>")  # a key may hold "/" (an X-Request-ID often does)
    class StoredBatch(MethodView):
        @blp.scope(*BATCH_WRITE_SCOPES)
        @blp.response(200, StoredBatchSchema)
        @blp.problems(404)
        def get(self, key: str) -> dict[str, Any]:
            """The stored outcome of the calling credential's batch with this key. Needs the write
            scope of the resource the batch wrote (one of those listed)."""
            stored = stored_outcome(current_app.extensions["batch"].key_model, current_actor(), key)
            require_scope(write_scope_of(stored["path"]))
            return stored

    return blp


batches_blp = make_batches_blueprint()
