"""Batch requests (`POST /api/<things>/batch`): the mechanics both services share.

Body: `{"items": [...], "mode": "transaction" | "batch", "dry_run": false}`. Each item is an
upsert through the service's own schema and service function, or `{"op": "delete", "id": N}`.

- `transaction` (default): every item is applied in one transaction; if any fails, nothing is
  written and the answer is 422 with one error per failed item.
- `batch`: each item stands alone (a savepoint each); valid items are written, failed ones reported.
- `dry_run`: the same work and answer inside a transaction that is rolled back: nothing is
  written, no version rows, no idempotency record.
- Answer: 201 if an item was created, else 200, with per-item results and a summary; with
  `Prefer: return=minimal`, 201 or 204 without a body and `Preference-Applied: return=minimal`.

Idempotency (the IETF `Idempotency-Key` draft; `X-Request-ID` counts as the same): the key is
scoped to the calling token. The first request claims the key in a transaction of its own (so
a concurrent second request sees it and gets 409); the outcome is stored in the same
transaction as the batch's writes, so a stored answer always matches what was written.
The same key and body replays the stored status and body with `Idempotent-Replayed: true`;
another body gives 422. Keys are forgotten after `IDEMPOTENCY_TTL_HOURS`. A claim whose
request died without an answer is abandoned after `ABANDONED_AFTER`.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from flask import Response, current_app, request
from marshmallow import Schema, ValidationError, fields, validate
from sqlalchemy import BigInteger, DateTime, Integer, String, Text, delete, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import unit_of_work
from shared.errors import DomainError, flatten_messages, problem
from shared.extensions import db
from shared.schemas import StrictSchema, now_utc

ACTIONS = ("created", "updated", "unchanged", "ignored_stale", "deleted", "error")
ABANDONED_AFTER = timedelta(minutes=10)
KEY_MAX_LENGTH = 255
RUNNING, DONE = "running", "done"
PROBLEMS = {409: "A request with this `Idempotency-Key` is still running",
            413: "More items than `BATCH_MAX_ITEMS`"}


# ---- wire shapes ---------------------------------------------------------------------------------

class BatchRequestSchema(StrictSchema):
    items = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, error="must not be empty"))
    mode = fields.String(load_default="transaction", validate=validate.OneOf(("transaction", "batch")))
    dry_run = fields.Boolean(load_default=False)


class ItemErrorSchema(StrictSchema):
    pointer = fields.String()
    detail = fields.String()
    type = fields.String()


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


# ---- the idempotency table -------------------------------------------------------------------------

class IdempotencyKeyMixin:
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), nullable=False)
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)  # the exact bytes sent, for replays
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)


def declare_idempotency_table(schema: str, module: str) -> type:
    from sqlalchemy import UniqueConstraint

    return type("IdempotencyKey", (IdempotencyKeyMixin, db.Model), {
        "__tablename__": "idempotency_keys", "__module__": module,
        "__table_args__": (UniqueConstraint("actor", "key", name="uq_idempotency_keys_actor_key"),
                           {"schema": schema}),
    })


# ---- what a service plugs in ------------------------------------------------------------------------

@dataclass
class BatchAdapter:
    """A service's part of batch requests: its item schema and its service functions."""

    item_schema: Schema  # loads one upsert item (the resource's schema, plus its matching keys)
    upsert: Callable[..., tuple[Any, str]]  # (data, *, source, actor, context) → (record, action)
    delete: Callable[..., Any]  # (record_id, *, source, actor) → record
    key_model: type
    # Optional: the loaded upsert items → a context for `upsert` (matches looked up and locked in
    # bulk, ids reserved) with which writes are flushed together at the end of the batch.
    prepare: Callable[[list[dict[str, Any]]], Any] | None = None


class DeleteItemSchema(StrictSchema):
    op = fields.String(required=True, validate=validate.Equal("delete"))
    id = fields.Integer(required=True, strict=True)


# ---- running a batch --------------------------------------------------------------------------------

def handle(adapter: BatchAdapter, body: dict[str, Any], *, actor: str) -> Response:
    settings = current_app.extensions["settings"]
    items = body["items"]
    if len(items) > settings.BATCH_MAX_ITEMS:
        return problem(413, "Too many items",
                       f"{len(items)} items sent; at most {settings.BATCH_MAX_ITEMS} per batch (BATCH_MAX_ITEMS)",
                       type="too-many-items")
    key = (request.headers.get("Idempotency-Key") or request.headers.get("X-Request-ID") or "").strip() or None
    if key is not None and (len(key) > KEY_MAX_LENGTH or not key.isprintable()):
        # the database could not store it: a 500 otherwise
        detail = f"must be at most {KEY_MAX_LENGTH} printable characters"
        return problem(422, "Invalid data", f"Idempotency-Key {detail}", type="validation-error",
                       errors=[{"parameter": "Idempotency-Key", "detail": detail}])
    if key is None or body["dry_run"]:
        return _to_response(*_run(adapter, body, actor=actor), replayed=False)

    request_hash = hashlib.sha256(json.dumps(
        {"path": request.path, "body": body}, sort_keys=True, default=str).encode()).hexdigest()
    claim = _claim(adapter.key_model, actor, key, request_hash)
    if isinstance(claim, Response):
        return claim
    try:
        status, payload, headers = _run(adapter, body, actor=actor, store=(adapter.key_model, claim))
    except BaseException:
        _release(adapter.key_model, claim)
        raise
    return _to_response(status, payload, headers, replayed=False)


def _run(adapter: BatchAdapter, body: dict[str, Any], *, actor: str,
         store: tuple[type, int] | None = None) -> tuple[int, Any, dict[str, str]]:
    transaction = body["mode"] == "transaction"
    session = db.session
    try:
        items = [_load_item(adapter, index, raw) for index, raw in enumerate(body["items"])]
        results = _write_items(adapter, items, actor=actor, transaction=transaction)
        failed = [r for r in results if r["action"] == "error"]
        if transaction and failed:
            session.rollback()
            errors = [dict(e, index=r["index"], pointer=f"/items/{r['index']}{e['pointer'].rstrip('/')}")
                      for r in failed for e in r["errors"]]
            outcome = (422, {"type": "validation-error", "title": "Invalid batch", "status": 422,
                             "detail": f"{len(failed)} of {len(results)} items failed; nothing was written",
                             "errors": errors}, {"Content-Type": "application/problem+json"})
        else:
            if body["dry_run"]:
                for result in results:
                    if result["action"] == "created":
                        result["id"] = None  # the id would be assigned when it is written for real
            summary = {action: sum(1 for r in results if r["action"] == action) for action in ACTIONS}
            summary["total"] = len(results)
            status = 201 if summary["created"] else 200
            outcome = (status, {"results": results, "summary": summary, "dry_run": body["dry_run"]}, {})
        if body["dry_run"]:
            session.rollback()
        elif store is not None:
            _store(*store, *outcome)
        session.commit()
        return outcome
    except BaseException:
        session.rollback()
        raise


@dataclass
class _Item:
    index: int
    deleting: bool = False
    data: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None  # set when the item did not even load


def _load_item(adapter: BatchAdapter, index: int, raw: Any) -> _Item:
    """Validate one item with its schema; nothing touches the database yet."""
    if not isinstance(raw, dict):
        return _Item(index, errors=[{"pointer": "/", "detail": "an item must be an object",
                                     "type": "validation-error"}])
    deleting = "op" in raw
    try:
        return _Item(index, deleting, (DeleteItemSchema() if deleting else adapter.item_schema).load(raw))
    except ValidationError as error:
        return _Item(index, errors=[dict(e, type="validation-error") for e in flatten_messages(error.messages)])


def _write_items(adapter: BatchAdapter, items: list[_Item], *, actor: str, transaction: bool) -> list[dict]:
    """First all at once: matches looked up in bulk, no savepoint per item, one flush. Only if
    that flush meets a constraint (a record created meanwhile by someone else) is the batch done
    again item by item, each in a savepoint of its own (batch mode) so a clash is that item's error."""
    if adapter.prepare is not None:
        try:
            with db.session.begin_nested():
                context = adapter.prepare([item.data for item in items if item.data and not item.deleting])
                results = [_write_item(adapter, item, actor=actor, context=context, isolated=False)
                           for item in items]
                db.session.flush()
                return results
        except IntegrityError:
            pass
    return [_write_item(adapter, item, actor=actor, context=None, isolated=not transaction) for item in items]


def _write_item(adapter: BatchAdapter, item: _Item, *, actor: str, context: Any, isolated: bool) -> dict[str, Any]:
    """One item. `isolated` wraps its writes in a savepoint so that a failure undoes only this
    item; in transaction mode any failure undoes everything, so none is needed."""
    result: dict[str, Any] = {"index": item.index, "id": None, "action": "error", "errors": item.errors or []}
    if item.errors:
        return result
    try:
        with db.session.begin_nested() if isolated else nullcontext():
            if item.deleting:
                record = adapter.delete(item.data["id"], source="batch", actor=actor)
                action = "deleted"
            else:
                extra = {"context": context} if context is not None else {}
                record, action = adapter.upsert(item.data, source="batch", actor=actor, **extra)
            result.update(id=record.id if record is not None else None, action=action)
    except DomainError as error:
        result["errors"] = [{"pointer": "/", "detail": error.detail, "type": error.type, **error.extra}]
    return result


def _to_response(status: int, payload: Any, headers: dict[str, str], *, replayed: bool) -> Response:
    minimal = "return=minimal" in request.headers.get("Prefer", "").replace(" ", "")
    extra = {"Idempotent-Replayed": "true"} if replayed else {}
    if minimal and status < 400:
        response = Response(status=201 if status == 201 else 204)
        response.headers["Preference-Applied"] = "return=minimal"
    else:
        response = Response(json.dumps(payload), status=status,
                            mimetype=headers.get("Content-Type", "application/json"))
    response.headers.update(extra)
    return response


# ---- idempotency keys ---------------------------------------------------------------------------------

def _claim(model: type, actor: str, key: str, request_hash: str) -> int | Response:
    """Claim `key` for this request (committed at once), or answer from what is stored."""
    now = now_utc()
    ttl = timedelta(hours=current_app.extensions["settings"].IDEMPOTENCY_TTL_HOURS)
    with unit_of_work():
        db.session.execute(delete(model).where(model.actor == actor, model.key == key, model.expires_at <= now))
        db.session.execute(delete(model).where(model.actor == actor, model.key == key, model.status == RUNNING,
                                               model.created_at <= now - ABANDONED_AFTER))
        claimed = db.session.execute(
            insert(model).values(actor=actor, key=key, request_hash=request_hash, status=RUNNING, created_at=now,
                                 expires_at=now + ttl, path=request.path)
            .on_conflict_do_nothing(constraint="uq_idempotency_keys_actor_key").returning(model.id)).scalar()
        if claimed is not None:
            return claimed
        stored = db.session.scalars(select(model).where(model.actor == actor, model.key == key)).one()
    if stored.request_hash != request_hash:
        return problem(422, "Idempotency key reused", "this Idempotency-Key was used with another request body",
                       type="idempotency-key-reused")
    if stored.status == RUNNING:
        return problem(409, "Request in progress", "a request with this Idempotency-Key is still running; "
                       "retry once it has finished", type="idempotency-key-in-use")
    return _to_response(stored.response_status, json.loads(stored.response_body), stored.response_headers or {},
                        replayed=True)


def _store(model: type, key_id: int, status: int, payload: Any, headers: dict[str, str]) -> None:
    """Store the outcome in the batch's own transaction (so it commits with the writes)."""
    db.session.execute(model.__table__.update().where(model.id == key_id).values(
        status=DONE, response_status=status, response_body=json.dumps(payload), response_headers=headers))


def _release(model: type, key_id: int) -> None:
    """The request failed without an answer: free the key so a retry can run."""
    with unit_of_work():
        db.session.execute(delete(model).where(model.id == key_id))


def stored_outcome(model: type, actor: str, key: str) -> Any:
    from shared.errors import NotFound

    row = db.session.scalars(select(model).where(model.actor == actor, model.key == key,
                                                 model.expires_at > now_utc())).first()
    if row is None:
        raise NotFound("no batch with this key for your token (or it has expired)")
    return {"key": row.key, "status": row.status, "response_status": row.response_status,
            "response": json.loads(row.response_body) if row.response_body else None, "created_at": row.created_at, "expires_at": row.expires_at}


# ---- GET /api/batches/<key> -------------------------------------------------------------------------

def make_batches_blueprint():
    from flask.views import MethodView

    from shared.http import Blueprint, current_actor

    blp = Blueprint("batches", __name__, url_prefix="/api/batches",
                    description="Stored outcomes of batch requests sent with an Idempotency-Key.")

    @blp.route("/<path:key>")  # a key may hold "/" (an X-Request-ID often does)
    class StoredBatch(MethodView):
        @blp.response(200, StoredBatchSchema)
        @blp.problems(401, 404)
        def get(self, key):
            """The stored outcome of the calling token's batch with this key."""
            return stored_outcome(current_app.extensions["batch"].key_model, current_actor(), key)

    return blp


batches_blp = make_batches_blueprint()
