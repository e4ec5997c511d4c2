"""A large scrape file is validated in worker processes, a chunk at a time, and written chunk by
chunk (issue 14): the same schema decides, every error keeps its pointer, and the outcome is the
one a file validated in line gets. The thresholds are lowered so a small file takes that path."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from .support import drop, encode, history, imports_of, scrape, the_therapist, therapist, wait_for_import
from .test_therapist_id_change import WEEK_2, counts, practice


@pytest.fixture
def pooled(monkeypatch) -> list[int]:
    """Every file goes through the worker processes in chunks of 2; returns the chunk count per file."""
    from shared.imports import pool
    from therapist_service import importer

    chunks: list[int] = []
    real = pool.map_chunks

    def counted(function, parts, **kwargs):
        results = list(real(function, parts, **kwargs))
        chunks.append(len(results))
        yield from results

    monkeypatch.setattr(importer, "POOLED_FROM", 1)
    monkeypatch.setattr(importer, "CHUNK", 2)
    monkeypatch.setattr(pool, "map_chunks", counted)
    return chunks


def _import(inbox, client, *entries: dict) -> dict:
    after = max((r["id"] for r in imports_of(client, "52074.json")), default=0)
    drop(inbox, "52074.json", scrape(*entries))
    return wait_for_import(client, "52074.json", after=after)


def test_invalid_entries_of_a_pooled_file_keep_their_pointers_and_the_valid_ones_are_written(
        inbox, client, pooled, admin_engine):
    bad_email = therapist("praxis2")
    bad_email["contact"]["email"] = "not an address"
    bad_status = therapist("praxis4", status="renamed")
    entries = [therapist("praxis1"), bad_email, therapist("praxis3"), bad_status, therapist("praxis5")]

    record = _import(inbox, client, *entries)

    assert pooled == [3]  # 5 entries in chunks of 2, validated by the workers
    assert record["status"] == "partial"
    assert record["counts"] == counts(created=3, failed=2)
    assert [(e["index"], e["ref"], e["pointer"], e["kind"]) for e in record["errors"]] == [
        (1, "praxis2", "/therapists/1/contact/email", "validation"),
        (3, "praxis4", "/therapists/3/status", "validation")]
    for external_id in ("praxis1", "praxis3", "praxis5"):
        created = the_therapist(client, external_id)
        assert [v["data"] for v in history(client, created["id"])] == [created]  # prepared in a worker
    with admin_engine.connect() as conn:
        events = conn.execute(text("SELECT type FROM therapist_service.event_outbox")).scalars().all()
    assert events == ["de.curavani.therapist.created"] * 3


def test_a_pooled_file_imported_again_unchanged_writes_nothing(inbox, client, pooled):
    entries = [therapist(f"praxis{n}") for n in range(5)]
    _import(inbox, client, *entries)

    record = _import(inbox, client, *entries)

    assert record["counts"] == counts(unchanged=5)
    assert pooled == [3]  # the second time, nothing was left to validate


def test_an_id_change_in_a_pooled_file_is_decided_on_the_whole_file(inbox, client, pooled):
    """An unknown id whose practice identity is stored: the file is validated whole before it is
    written, so the take-over sees the deletion of the old id later in the file."""
    _import(inbox, client, practice("praxis67"))
    before = the_therapist(client, "praxis67")

    record = _import(inbox, client, practice("p-0815", "new", WEEK_2), therapist("praxis1"), therapist("praxis2"),
                     practice("praxis67", "deleted", WEEK_2))

    assert record["errors"] == [] and record["counts"] == counts(created=2, updated=1, unchanged=1)
    after = the_therapist(client, "p-0815")
    assert (after["id"], after["previous_external_ids"]) == (before["id"], ["praxis67"])


def test_a_pass_of_several_files_validates_each_next_file_while_the_one_before_imports(
        inbox, make_app, admin_engine, monkeypatch, tmp_path):
    """Only the first file of the pass is validated here; the others were read ahead and validated
    in a worker process. Each file is still its own import, with its own counts and errors."""
    from therapist_service import importer

    loaded_here: list[str] = []
    real_load = importer._load

    def counted(item):
        loaded_here.append(item.get("id"))
        return real_load(item)

    monkeypatch.setattr(importer, "_load", counted)  # the worker processes keep their own, uncounted
    bad = therapist("praxis29")
    bad["location"]["postcode"] = "5206"
    drop(inbox, "52074.json", scrape(therapist("praxis11"), therapist("praxis12")))
    drop(inbox, "52075.json", scrape(therapist("praxis21"), bad, therapist("praxis22")))
    drop(inbox, "52076.json", scrape(therapist("praxis31")))
    app = make_app("therapist", IMPORTS_ENABLED=False, THERAPIST_IMPORT_DIR=str(inbox),
                   THERAPIST_IMPORT_SETTLE_SECONDS=0, ALERT_OUTBOX_DIR=str(tmp_path / "outbox"))

    with app.app_context():
        summary = app.extensions["imports"].run_pass(app.extensions["imports"].source.list())

    assert summary.by_status == {"succeeded": 2, "partial": 1}
    assert loaded_here == ["praxis11", "praxis12"]  # the first file; the next ones came validated
    with admin_engine.connect() as conn:
        records = conn.execute(text("SELECT name, counts->>'created', errors FROM therapist_service.imports "
                                    "ORDER BY name")).all()
        stored = conn.execute(text("SELECT external_id FROM therapist_service.therapists ORDER BY 1")).scalars().all()
    assert [(name, created) for name, created, _ in records] == [("52074.json", "2"), ("52075.json", "2"),
                                                                 ("52076.json", "1")]
    assert [(e["index"], e["pointer"]) for e in records[1][2]] == [(1, "/therapists/1/location/postcode")]
    assert stored == ["praxis11", "praxis12", "praxis21", "praxis22", "praxis31"]


def test_an_entry_a_worker_cannot_read_fails_the_whole_file_with_its_offset_and_writes_nothing(
        inbox, client, pooled, admin_engine):
    unreadable = therapist("praxis4")
    unreadable["professional_info"]["license"] = "LICENSE-HERE"
    payload = encode(scrape(therapist("praxis1"), therapist("praxis2"), therapist("praxis3"), unreadable))
    payload = payload.replace(b'"LICENSE-HERE"', b'"Psycho\xfftherapeut"')
    offset = payload.index(b"\xff")
    drop(inbox, "52074.json", payload)

    record = wait_for_import(client, "52074.json")

    assert record["status"] == "failed"
    [error] = record["errors"]
    assert error["kind"] == "not-utf8"
    assert f"offset {offset}" in error["detail"]
    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM therapist_service.therapists")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM therapist_service.event_outbox")).scalar() == 0


def test_a_prepared_therapist_crosses_processes_unchanged():
    """A worker sends what it loaded as msgpack (`PreparedTherapist.__reduce__`): the importing
    process gets the same dict, datetimes and texts, and an integer msgpack cannot hold still goes."""
    import pickle

    from therapist_service import importer, services

    loaded = importer._load(therapist("praxis1"))[1]
    huge = importer._load(therapist("praxis2", availability={"waiting_time_weeks": 2**70}))[1]
    for data in (loaded, huge):
        prepared = services.PreparedTherapist(data)
        received = pickle.loads(pickle.dumps(prepared))
        assert type(received) is services.PreparedTherapist
        assert received == prepared and received["last_modified"] == data["last_modified"]
        assert received["last_modified"].tzinfo is not None
        assert (received.row_tail, received.groups) == (prepared.row_tail, prepared.groups)


def test_a_process_that_exits_while_its_workers_start_exits_at_once_and_cleanly():
    """`pool.start` spawns the workers from a thread; an import can finish (an unchanged file)
    and the process exit before they are up. The exit waits for them and stops them."""
    import subprocess
    import sys

    from conftest import ROOT

    script = ("import time\nfrom shared.imports import pool\n"
              "pool.start(('therapist_service.importer',))\ntime.sleep(0.2)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert (done.returncode, done.stderr) == (0, "")
