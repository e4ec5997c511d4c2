"""Batch requests (`POST /api/<things>/batch`) and idempotency keys, shared by both services.

Body: `{"items": [...], "mode": "transaction" | "batch", "dry_run": false}`. Each item is an
upsert through the service's own schema and service function, or `{"op": "delete", "id": N}`.
`schemas` holds the wire shapes, `idempotency` the key store, `runner` the batch itself (no Flask),
`views` the HTTP edge (headers in, response out) and `GET /api/batches/<key>`.
"""
from shared.batch.idempotency import (
                                      ABANDONED_AFTER,
                                      DONE,
                                      KEY_MAX_LENGTH,
                                      RUNNING,
                                      IdempotencyKeyInUse,
                                      IdempotencyKeyMixin,
                                      IdempotencyKeyReused,
                                      IdempotencyStore,
                                      Outcome,
                                      checked_key,
                                      request_hash,
                                      stored_outcome,
)
from shared.batch.runner import BatchAdapter, TooManyItems, run_batch
from shared.batch.schemas import (
                                      ACTIONS,
                                      PROBLEMS,
                                      BatchRequestSchema,
                                      BatchResponseSchema,
                                      DeleteItemSchema,
                                      ItemErrorSchema,
                                      ItemResultSchema,
                                      StoredBatchSchema,
)
from shared.batch.views import batches_blp, handle, idempotency_key, idempotency_store, make_batches_blueprint, prefers, respond

__all__ = [
    "ABANDONED_AFTER", "ACTIONS", "DONE", "KEY_MAX_LENGTH", "PROBLEMS", "RUNNING", "BatchAdapter",
    "BatchRequestSchema", "BatchResponseSchema", "DeleteItemSchema", "IdempotencyKeyInUse", "IdempotencyKeyMixin",
    "IdempotencyKeyReused", "IdempotencyStore", "ItemErrorSchema", "ItemResultSchema", "Outcome",
    "StoredBatchSchema", "TooManyItems", "batches_blp", "checked_key", "handle",
    "idempotency_key", "idempotency_store", "make_batches_blueprint", "prefers", "request_hash", "respond",
    "run_batch", "stored_outcome",
]
