"""Running a batch: every item through the service's own schema and service function, in one
transaction (`transaction` mode) or each on its own (`batch` mode). Given everything it needs
(items, mode, key, actor): nothing here reads the request or the app."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypedDict
from uuid import UUID

from marshmallow import Schema, ValidationError
from sqlalchemy import ColumnElement, and_, text

from shared.batch.idempotency import IdempotencyStore, Outcome
from shared.batch.schemas import ACTIONS, DeleteItemSchema
from shared.db import bulk_first
from shared.errors import PROBLEM_MIMETYPE, DomainError, flatten_messages, problem_body
from shared.extensions import db


class ItemResult(TypedDict):
    """One item's line in a batch's answer (`ItemResultSchema`)."""

    index: int
    id: int | str | UUID | None  # the record's; None when nothing was written (or a dry run's create)
    action: str  # one of ACTIONS, or "error"
    errors: list[dict[str, Any]]


class TooManyItems(DomainError):
    status, type, title = 413, "too-many-items", "Too many items"


@dataclass
class BatchAdapter:
    """A service's part of batch requests: its item schema and its service functions."""

    item_schema: Schema  # loads one upsert item (the resource's schema, plus its matching keys)
    upsert: Callable[..., tuple[Any, str]]  # (data, *, source, actor, context) → (record, action)
    delete: Callable[..., Any] | None  # (record_id, *, source, actor) → record; None: no deletes
    key_model: type
    # Optional: the loaded upsert items → a context for `upsert` (matches looked up and locked in
    # bulk, ids reserved) with which writes are flushed together at the end of the batch.
    prepare: Callable[[list[dict[str, Any]]], Any] | None = None
    # Optional, with `prepare`: called with the context once every item is through, before that
    # flush (to write in bulk what the upserts left in the context, such as their version rows);
    # with `delete`, also before each delete item (so a record's versions stay in order): it writes
    # what is pending and forgets it.
    finish: Callable[[Any], None] | None = None
    # Optional: applies the credential's organisation to one loaded upsert item, `(data, org)`, in
    # place, before `prepare` sees it; a `DomainError` (another organisation) is that item's error.
    bind: Callable[[dict[str, Any], str | None], None] | None = None


def run_batch(adapter: BatchAdapter, items: Sequence[object], *, mode: str, dry_run: bool, actor: str,
              key: str | None, keys: IdempotencyStore, path: str, body: Any, max_items: int,
              items_pointer: str = "/items", org: str | None = None, invalid_status: int = 422) -> Outcome:
    """Apply `items` (the list under `items_pointer` of `body`) once per idempotency key.
    Answer: 201 if an item was created, else 200, with per-item results and a summary; 422 with
    one error per failed item when `mode` is `transaction` and any item failed (nothing written;
    `invalid_status` instead of 422 where an upstream specification says 400)."""
    if len(items) > max_items:
        raise TooManyItems(f"{len(items)} items sent; at most {max_items} per batch (BATCH_MAX_ITEMS)")
    return keys.run(lambda: _apply(adapter, items, mode=mode, dry_run=dry_run, actor=actor,
                                   items_pointer=items_pointer, org=org, invalid_status=invalid_status),
                    actor=actor, key=None if dry_run else key, path=path, body=body)


def _apply(adapter: BatchAdapter, raw_items: Sequence[object], *, mode: str, dry_run: bool, actor: str,
           items_pointer: str, org: str | None, invalid_status: int) -> Outcome:
    transaction = mode == "transaction"
    items = [_load_item(adapter, index, raw, org) for index, raw in enumerate(raw_items)]
    results = _write_items(adapter, items, actor=actor, transaction=transaction)
    failed = [r for r in results if r["action"] == "error"]
    if transaction and failed:
        db.session.rollback()
        errors = [dict(e, index=r["index"], pointer=f"{items_pointer}/{r['index']}{e['pointer'].rstrip('/')}")
                  for r in failed for e in r["errors"]]
        return Outcome(invalid_status, problem_body(invalid_status, "Invalid batch",
                                         f"{len(failed)} of {len(results)} items failed; nothing was written",
                                         type="validation-error", errors=errors),
                       {"Content-Type": PROBLEM_MIMETYPE})
    if dry_run:
        db.session.rollback()
        for result in results:
            if result["action"] == "created":
                result["id"] = None  # the id would be assigned when it is written for real
    summary = {action: sum(1 for r in results if r["action"] == action) for action in ACTIONS}
    summary["total"] = len(results)
    return Outcome(201 if summary["created"] else 200, {"results": results, "summary": summary, "dry_run": dry_run})


@dataclass
class _Item:
    index: int
    deleting: bool = False
    data: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None  # set when the item did not even load


def _load_item(adapter: BatchAdapter, index: int, raw: object, org: str | None) -> _Item:
    """Validate one item with its schema, and bind it to the credential's organisation; nothing
    touches the database yet."""
    if not isinstance(raw, dict):
        return _Item(index, errors=[{"pointer": "/", "detail": "an item must be an object",
                                     "type": "validation-error"}])
    deleting = "op" in raw and adapter.delete is not None
    try:
        data = (DeleteItemSchema() if deleting else adapter.item_schema).load(raw)
    except ValidationError as error:
        return _Item(index, errors=[dict(e, type="validation-error") for e in flatten_messages(error.messages)])
    if adapter.bind is not None and not deleting:
        try:
            adapter.bind(data, org)
        except DomainError as error:
            return _Item(index, errors=[_item_error(error)])
    return _Item(index, deleting, data)


def _write_items(adapter: BatchAdapter, items: list[_Item], *, actor: str, transaction: bool) -> list[ItemResult]:
    """First all at once: matches looked up in bulk, no savepoint per item, one flush. Only if
    that flush meets a constraint (a record created meanwhile by someone else) is the batch done
    again item by item, each in a savepoint of its own (batch mode) so a clash is that item's error."""
    def one_by_one() -> list[ItemResult]:
        return [_write_item(adapter, item, actor=actor, context=None, isolated=not transaction) for item in items]

    prepare, finish = adapter.prepare, adapter.finish
    if prepare is None:
        return one_by_one()

    def all_at_once() -> list[ItemResult]:
        context = prepare([item.data for item in items if item.data and not item.deleting])
        results = [_write_item(adapter, item, actor=actor, context=context, isolated=False) for item in items]
        if finish is not None:
            finish(context)
        db.session.flush()
        return results

    return bulk_first(all_at_once, one_by_one)


def _write_item(adapter: BatchAdapter, item: _Item, *, actor: str, context: Any, isolated: bool) -> ItemResult:
    """One item. `isolated` wraps its writes in a savepoint so that a failure undoes only this
    item; in transaction mode any failure undoes everything, so none is needed."""
    result: ItemResult = {"index": item.index, "id": None, "action": "error", "errors": item.errors or []}
    if item.errors:
        return result
    assert item.data is not None
    try:
        with db.session.begin_nested() if isolated else nullcontext():
            if item.deleting:
                assert adapter.delete is not None
                if context is not None and adapter.finish is not None:
                    adapter.finish(context)
                record = adapter.delete(item.data["id"], source="batch", actor=actor)
                action = "deleted"
            else:
                extra = {"context": context} if context is not None else {}
                record, action = adapter.upsert(item.data, source="batch", actor=actor, **extra)
            result["id"], result["action"] = (record.id if record is not None else None), action
    except DomainError as error:
        result["errors"] = [_item_error(error)]
    return result


def _item_error(error: DomainError) -> dict[str, Any]:
    return {"pointer": "/", "detail": error.detail, "type": error.type, **error.extra}


def answers_naming(key_model: Any, record_id: int) -> ColumnElement[bool]:
    """The stored answers (rows of a service's idempotency keys) of batches whose results name
    `record_id`: as an item's `id`, or as a duplicate's `existing_id` — the body `_apply` answers with."""
    names_record = text(
        "jsonb_path_exists(CAST(response_body AS jsonb), "
        "'$.results[*] ? (@.id == $id || @.errors[*].existing_id == $id)', jsonb_build_object('id', :id))"
    ).bindparams(id=record_id)
    return and_(key_model.response_body.is_not(None), key_model.response_body.like("{%"), names_record)
