"""Idempotency keys (the IETF `Idempotency-Key` draft): claim a key, run the work once, store its
outcome in the work's own transaction, replay it for a repeat. No Flask here: callers pass it all in.

The first request claims the key in a transaction of its own (so a concurrent second request sees
it and gets 409); the outcome is stored in the same transaction as the work's writes, so a stored
answer always matches what was written. The same key and body replays the stored outcome; another
body gives 422. Keys expire after the store's `ttl`; a claim whose request died without an answer
is abandoned after `ABANDONED_AFTER`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CursorResult,
    DateTime,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import unit_of_work
from shared.errors import Conflict, DomainError, InvalidData, NotFound
from shared.extensions import db
from shared.schemas import now_utc

ABANDONED_AFTER = timedelta(minutes=10)
KEY_MAX_LENGTH = 255
RUNNING, DONE = "running", "done"


@dataclass(frozen=True)
class Outcome:
    """An answer to store and send: status, JSON body (None for none) and headers."""

    status: int
    body: object  # JSON
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


class IdempotencyKeyReused(DomainError):
    status, type, title = 422, "idempotency-key-reused", "Idempotency key reused"


class IdempotencyKeyInUse(Conflict):
    type, title = "idempotency-key-in-use", "Request in progress"


class IdempotencyKeyMixin:
    __tablename__ = "idempotency_keys"

    @staticmethod
    def table_args(schema: str) -> tuple[Any, ...]:
        return (UniqueConstraint("actor", "key", name="uq_idempotency_keys_actor_key"), {"schema": schema})

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


def checked_key(key: str | None) -> str | None:
    """The key as sent (blank counts as none), or 422 for one the database could not store."""
    key = (key or "").strip() or None
    if key is not None and (len(key) > KEY_MAX_LENGTH or not key.isprintable()):
        detail = f"must be at most {KEY_MAX_LENGTH} printable characters"
        raise InvalidData(f"Idempotency-Key {detail}", errors=[{"parameter": "Idempotency-Key", "detail": detail}])
    return key


def request_hash(path: str, body: Any) -> str:
    return hashlib.sha256(json.dumps({"path": path, "body": body}, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class IdempotencyStore:
    """The idempotency keys of one service (`model`), kept for `ttl`."""

    model: Any  # a service's IdempotencyKey table (IdempotencyKeyMixin)
    ttl: timedelta

    def run(self, work: Callable[[], Outcome], *, actor: str, key: str | None, path: str, body: Any) -> Outcome:
        """Do `work` (writes in the session, not committed; it may roll back itself) once per key:
        commit its writes together with its stored outcome, or replay the outcome of an earlier run."""
        claim: int | None = None
        if key is not None:
            claimed = self.claim(actor, key, request_hash(path, body), path)
            if isinstance(claimed, Outcome):
                return claimed
            claim = claimed
        try:
            outcome = work()
            if claim is not None:
                self.store(claim, outcome)
            db.session.commit()
            return outcome
        except BaseException:
            db.session.rollback()
            if claim is not None:
                self.release(claim)
            raise

    def claim(self, actor: str, key: str, hashed: str, path: str) -> int | Outcome:
        """Claim `key` for this request (committed at once), or answer from what is stored."""
        model, now = self.model, now_utc()
        with unit_of_work():
            db.session.execute(delete(model).where(model.actor == actor, model.key == key, model.expires_at <= now))
            db.session.execute(delete(model).where(model.actor == actor, model.key == key, model.status == RUNNING,
                                                   model.created_at <= now - ABANDONED_AFTER))
            claimed = db.session.execute(
                insert(model).values(actor=actor, key=key, request_hash=hashed, status=RUNNING, created_at=now,
                                     expires_at=now + self.ttl, path=path)
                .on_conflict_do_nothing(constraint="uq_idempotency_keys_actor_key").returning(model.id)).scalar()
            if claimed is not None:
                return claimed
            stored = db.session.scalars(select(model).where(model.actor == actor, model.key == key)).one()
        if stored.request_hash != hashed:
            raise IdempotencyKeyReused("this Idempotency-Key was used with another request body")
        if stored.status == RUNNING:
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still running; "
                                      "retry once it has finished")
        return self.replay(stored)

    def store(self, key_id: int, outcome: Outcome) -> None:
        """Store the outcome in the work's own transaction (so it commits with the writes)."""
        db.session.execute(self.model.__table__.update().where(self.model.id == key_id).values(
            status=DONE, response_status=outcome.status, response_body=json.dumps(outcome.body),
            response_headers=outcome.headers))

    def release(self, key_id: int) -> None:
        """The request failed without an answer: free the key so a retry can run."""
        with unit_of_work():
            db.session.execute(delete(self.model).where(self.model.id == key_id))

    @staticmethod
    def replay(stored: Any) -> Outcome:
        return Outcome(stored.response_status, json.loads(stored.response_body), stored.response_headers or {},
                       replayed=True)


def replace_answers(model: type[IdempotencyKeyMixin], where: ColumnElement[bool], outcome: Outcome) -> int:
    """Store `outcome` as the answer of every key of `model` that `where` selects, in the caller's
    transaction. The keys stay claimed, so a repeat of one of those requests replays `outcome`.
    How many were replaced."""
    return cast("CursorResult[Any]", db.session.execute(
        update(model).where(where)
        .values(response_status=outcome.status, response_body=json.dumps(outcome.body),
                response_headers=outcome.headers)
        .execution_options(synchronize_session=False))).rowcount


def stored_outcome(model: type[IdempotencyKeyMixin], actor: str, key: str) -> dict[str, Any]:
    row = db.session.scalars(select(model).where(model.actor == actor, model.key == key,
                                                 model.expires_at > now_utc())).first()
    if row is None:
        raise NotFound("no batch with this key for your token (or it has expired)")
    return {"key": row.key, "status": row.status, "response_status": row.response_status,
            "response": json.loads(row.response_body) if row.response_body else None,
            "created_at": row.created_at, "expires_at": row.expires_at, "path": row.path}
