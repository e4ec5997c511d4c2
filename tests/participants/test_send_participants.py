"""`scripts/send_participants.py` against a live therapist service over HTTP (werkzeug's server on
loopback, in a thread): batches with an idempotency key each, replays on a re-run, refused batches
reported by item position, and the generator."""
from __future__ import annotations

import importlib.util
import io
import json
import sys

import pytest
from conftest import ROOT, TOKEN
from helpers import free_port, serving

from .support import count, person, rows

spec = importlib.util.spec_from_file_location("send_participants", ROOT / "scripts" / "send_participants.py")
send_participants = sys.modules["send_participants"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(send_participants)


@pytest.fixture
def live_url(therapist_app):
    with serving(therapist_app) as url:
        yield url


def run(tmp_path, capsys, url, document, *options):
    path = tmp_path / "participants.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    status = send_participants.main(["send", str(path), "--url", url, "--token", TOKEN, *options])
    return status, capsys.readouterr().out.splitlines()


def test_sends_a_generated_file_in_batches_and_a_rerun_replays_every_batch(tmp_path, capsys, live_url, admin_engine):
    document = send_participants.generate(25, mid_ratio=0.7, seed=3)
    status, lines = run(tmp_path, capsys, live_url, document, "--batch-size", "10")
    assert status == 0
    assert [line.split(":")[0] for line in lines[:3]] == [
        "batch 1/3 (items 1-10)", "batch 2/3 (items 11-20)", "batch 3/3 (items 21-25)"]
    assert all(": 201 " in line for line in lines[:3])
    assert lines[3] == "3 batches: 3 accepted (0 replayed), 0 refused; 25 created, 0 updated, 0 unchanged"
    assert count(admin_engine, "participants") == 25
    assert count(admin_engine, "idempotency_keys") == 3

    status, lines = run(tmp_path, capsys, live_url, document, "--batch-size", "10")
    assert status == 0
    assert all(" replayed " in line for line in lines[:3])
    assert lines[3].startswith("3 batches: 3 accepted (3 replayed)")
    assert count(admin_engine, "participant_versions") == 25


def test_a_changed_file_sent_again_reports_updates_and_unchanged(tmp_path, capsys, live_url):
    document = send_participants.generate(4, mid_ratio=0.0, seed=4)
    run(tmp_path, capsys, live_url, document)
    document["participants"][1]["attendanceStatus"] = "Attended" if document["participants"][1][
        "attendanceStatus"] != "Attended" else "Registered"
    status, lines = run(tmp_path, capsys, live_url, document)
    assert status == 0
    assert lines[0] == "batch 1/1 (items 1-4): 200 0 created, 1 updated, 3 unchanged"


def test_a_refused_batch_names_item_positions_and_fields_and_the_exit_status_is_1(tmp_path, capsys, live_url,
                                                                                    admin_engine):
    participants = [person(n) for n in range(4)]
    participants[3] = {**person(3), "mid": "MID-1", "MID": "MID-2"}
    status, lines = run(tmp_path, capsys, live_url, participants, "--batch-size", "2")
    assert status == 1
    assert lines[0] == "batch 1/2 (items 1-2): 201 2 created, 0 updated, 0 unchanged"
    assert lines[1].startswith("batch 2/2 (items 3-4): 400 Invalid batch")  # SPEC §6.6: 400, fix the data
    assert lines[1].endswith("— fix the data")
    assert lines[2].startswith("    item 4 /MID: differs from `mid`")
    assert lines[-1] == "2 batches: 1 accepted (0 replayed), 1 refused; 2 created, 0 updated, 0 unchanged"
    assert [r.id for r in rows(admin_engine, "SELECT id FROM therapist_service.participants ORDER BY id")] == [
        "temp-000", "temp-001"]
    assert "Jana" not in "\n".join(lines)  # positions and fields, never names


@pytest.fixture
def failing_url():
    """A server that answers every request 503, as a service does whose database is down."""
    def app(environ, start_response):
        start_response("503 SERVICE UNAVAILABLE", [("Content-Type", "application/problem+json")])
        return [json.dumps({"type": "about:blank", "title": "Service Unavailable", "status": 503}).encode()]

    with serving(app) as url:
        yield url


def try_again(url: str, document) -> tuple[int, list[str]]:
    out = io.StringIO()
    summary = send_participants.send(document, send_participants.http_post(url), token=TOKEN, batch_size=2,
                                     attempts=2, backoff=0.01, out=out)
    return send_participants.exit_status(summary), out.getvalue().splitlines()


def test_a_5xx_after_the_retries_says_try_again_and_exits_75_not_1(failing_url):
    status, lines = try_again(failing_url, [person(n) for n in range(4)])
    assert status == send_participants.TRY_AGAIN_EXIT == 75
    assert lines[0].startswith("batch 1/2 (items 1-2): 503 Service Unavailable after 2 attempts: try again later")
    assert "the 1 batches after it were not sent" in lines[0]
    assert lines[-1].startswith("2 batches: 0 accepted (0 replayed), 0 refused, 1 failed (try again), 1 not sent")


def test_no_answer_at_all_says_try_again_and_exits_75():
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: the connection is refused
    status, lines = try_again(closed, [person(1)])
    assert status == 75
    assert lines[0].startswith("batch 1/1 (items 1-1): no answer (URLError) after 2 attempts: try again later")


def test_the_generator_gives_the_mid_ratio_and_distinct_people(capsys):
    assert send_participants.main(["generate", "--count", "1000", "--mid-ratio", "0.7", "--seed", "1"]) == 0
    participants = json.loads(capsys.readouterr().out)["participants"]
    mids = [p.get("mid") or p.get("MID") or p.get("mId") for p in participants]
    assert 650 <= sum(mid is not None for mid in mids) <= 750
    assert len({p["participantId"] for p in participants}) == 1000
    assert len({p["email"] for p in participants}) == 1000
    assert {key for p in participants for key in ("mid", "MID", "mId") if key in p} == {"mid", "MID", "mId"}
