"""Domain events (SPEC §9): a transactional outbox in each service's schema and a relay to Kafka.

How events come to be:
- Every version row written through `shared.versioning` (`add_version`, or `add_versions` for
  bulk writes) records its event in the same transaction: `created` for version 1, `deleted`
  when the record is deleted with it, `updated` otherwise. A new record type gets events for
  free by writing its versions there; its version table's name (`<aggregate>_versions`) says
  which aggregate it is (`shared.events.outbox.AGGREGATES`).
- Erasure has no version row: call, inside the erasure's unit of work,

      from shared.events import record_erasure
      record_erasure("patient_service", "patient", patient_id, version=patient.version,
                     actor=actor, time=now)

  which records `de.curavani.patient.erased` with `{"id", "version", "changed": []}`.

Nothing is recorded for a write that changes nothing (no version row), and whatever is rolled
back (a dry run, a failed file) takes its events with it. The relay (`shared.events.relay`)
publishes them; `flask --app <service> events tail` prints what arrives on the topics.
"""
from shared.events.outbox import event_models, record_erasure, register_event_tables

__all__ = ["event_models", "record_erasure", "register_event_tables"]
