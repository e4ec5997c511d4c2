"""Storage limitation (SPEC §10.3, §10.4): the importer deletes old backup copies and old access
log entries, and nothing younger; a real backup folder and a real database."""
from __future__ import annotations

import os
from datetime import timedelta

from patient_import.support import MAX, run_pass, sample_bytes
from sqlalchemy import text

from patient_service import privacy
from shared.schemas import now_utc

DAY = 24 * 3600


def aged_file(folder, name: str, days: float):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"{}")
    written = now_utc().timestamp() - days * DAY
    os.utime(path, (written, written))
    return path


def add_log_entries(admin_engine, *ages_in_days: float) -> None:
    with admin_engine.begin() as conn:
        for age in ages_in_days:
            conn.execute(text("INSERT INTO patient_service.access_log (read_at, actor, patient_id, what) "
                              "VALUES (now() - make_interval(secs => :seconds), 'tests', 1, 'record')"),
                         {"seconds": age * DAY})


def log_ages_in_days(admin_engine) -> list[int]:
    with admin_engine.connect() as conn:
        return sorted(conn.execute(text(
            "SELECT round(extract(epoch FROM now() - read_at) / 86400) FROM patient_service.access_log")).scalars())


def test_the_import_pass_deletes_backups_older_than_the_retention_and_keeps_the_rest(
        make_importer, gcs, backup_dir):
    app = make_importer(PATIENT_IMPORT_BACKUP_RETENTION_DAYS=30)
    old = aged_file(backup_dir, "0ld00001-1.json", days=31)
    left_by_a_crash = aged_file(backup_dir, ".backup-x.tmp", days=40)
    young = aged_file(backup_dir, "y0ung001-1.json", days=29)
    gcs.upload(MAX, sample_bytes(MAX))

    run_pass(app)

    assert not old.exists() and not left_by_a_crash.exists()
    assert young.exists()
    assert len([p for p in backup_dir.iterdir() if p.name.startswith("0b1ab67b-")]) == 1  # just imported


def test_without_a_backup_retention_every_backup_is_kept(make_importer, gcs, backup_dir):
    app = make_importer()
    old = aged_file(backup_dir, "0ld00001-1.json", days=3650)

    run_pass(app)

    assert old.exists()


def test_the_import_pass_deletes_access_log_entries_older_than_the_retention(make_importer, gcs, admin_engine):
    app = make_importer(ACCESS_LOG_RETENTION_DAYS=730)
    add_log_entries(admin_engine, 800, 731, 729, 1)

    run_pass(app)

    assert log_ages_in_days(admin_engine) == [1, 729]


def test_retention_runs_daily_while_pending_erasure_deletions_run_every_pass(migrated, make_app, tmp_path,
                                                                           admin_engine):
    app = make_app("patient")
    upkeep = privacy.Housekeeping(str(tmp_path), backup_retention_days=10, access_log_retention_days=5)
    start = now_utc()
    with app.app_context():
        upkeep(now=start)
        add_log_entries(admin_engine, 6)
        old = aged_file(tmp_path, "0ld00001-1.json", days=11)

        upkeep(now=start + timedelta(hours=23))
        assert old.exists() and log_ages_in_days(admin_engine) == [6]

        upkeep(now=start + timedelta(hours=24))
        assert not old.exists() and log_ages_in_days(admin_engine) == []


def test_pruning_the_log_works_in_batches(migrated, make_app, admin_engine, monkeypatch):
    monkeypatch.setattr(privacy, "PRUNE_BATCH", 2)
    app = make_app("patient")
    add_log_entries(admin_engine, 10, 10, 10, 10, 10, 1)

    with app.app_context():
        removed = privacy.prune_access_log(5)

    assert removed == 5 and log_ages_in_days(admin_engine) == [1]
