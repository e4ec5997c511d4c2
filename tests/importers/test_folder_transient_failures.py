"""A folder file whose import fails for a transient reason — its database connection terminated in
the middle of the import, the database staying up — is imported again seconds later, not at the
next rescan, and exactly once; a file with bad content still waits for new content."""
from __future__ import annotations

from sqlalchemy import text

from .support import drop, imports_of, scrape, therapist, wait_for_import, wait_until

NAME = "52074.json"
RESCAN_SECONDS = 300.0  # the default: a retry must not wait for it


def importer_waiting_on_a_lock(admin_engine) -> int | None:
    """The importer's backend, waiting for us to let it write therapists (INSERT or COPY; not a
    heartbeat that happens to wait a moment for a row lock)."""
    with admin_engine.connect() as connection:
        return connection.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'therapist_service' AND wait_event_type = 'Lock' "
            "AND query ~ '^(INSERT INTO|COPY) \"?therapist_service\"?\\.\"?therapists\"? '")).scalar()


def version_rows(admin_engine) -> int:
    with admin_engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM therapist_service.therapist_versions")).scalar()


def stored_therapists(admin_engine) -> int:
    with admin_engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM therapist_service.therapists")).scalar()


def test_import_whose_connection_is_terminated_is_retried_within_seconds_and_imported_once(
        inbox, start_importer, admin_engine):
    # One attempt allowed: a transient failure is not the file's and must not quarantine it.
    client = start_importer(THERAPIST_IMPORT_RESCAN_SECONDS=RESCAN_SECONDS,
                            PATIENT_IMPORT_MAX_ATTEMPTS=1).test_client()
    document = scrape(*(therapist(f"praxis-{n}") for n in range(20)))
    with admin_engine.connect() as blocker:
        # Writes to the therapists table wait for us: the importer is caught inside the file's
        # transaction, after its claim, and its backend is terminated there.
        transaction = blocker.begin()
        blocker.execute(text("LOCK TABLE therapist_service.therapists IN SHARE MODE"))
        drop(inbox, NAME, document)
        importer_pid = wait_until(lambda: importer_waiting_on_a_lock(admin_engine),
                                  what="the import to wait for the therapists table")
        with admin_engine.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": importer_pid}).scalar()
        transaction.rollback()

    def imported():
        records = imports_of(client, NAME)
        return records if any(r["status"] == "succeeded" for r in records) else None

    records = wait_until(imported, timeout=30, what="the file to be imported again")
    assert len(records) == 1, records  # the same version: the failed record was retried
    assert records[0]["attempts"] == 2
    assert stored_therapists(admin_engine) == 20
    assert version_rows(admin_engine) == 20  # one version each: the first attempt left nothing


def test_file_with_bad_content_still_waits_for_new_content(inbox, start_importer):
    client = start_importer(THERAPIST_IMPORT_RESCAN_SECONDS=RESCAN_SECONDS).test_client()
    drop(inbox, NAME, b"{ not json")
    record = wait_for_import(client, NAME)
    assert record["status"] == "failed"
    assert record["next_attempt_at"] is None
