"""Logs: `LOG_FORMAT=json` gives one JSON object per line with the fields on-call filters by, and
no log line — at DEBUG, of a real import of the sample files and of failing files, in both
services — holds a name, an e-mail address or a birth date from the samples, or a patient file
name (SPEC §7.3: name the registration token instead)."""
from __future__ import annotations

import json
import logging
import re

import pytest
from conftest import AUTH

from .support import PATIENT_SAMPLES, THERAPIST_SAMPLE, copy_samples

JSON_KEYS = {"time", "level", "logger", "message", "service", "request_id", "import_id"}


def personal_data() -> set[str]:
    """Every name, e-mail address and birth date in the sample files, and the patient file names."""
    found: set[str] = set()
    for path in PATIENT_SAMPLES:
        patient = json.loads(path.read_text(encoding="utf-8"))["patient_data"]
        found |= {patient["vorname"], patient["nachname"], patient["email"], patient["geburtsdatum"]}
        year, month, day = patient["geburtsdatum"].split("-")
        found |= {f"{day}.{month}.{year}", f"{year}{month}{day}"}
        found |= {path.name, path.stem}
        nachname, vorname = path.stem.split("_")[:2]  # as the file name spells them (groesser, juergen-marie)
        found |= {nachname, vorname}
    for therapist in json.loads(THERAPIST_SAMPLE.read_text(encoding="utf-8"))["therapists"]:
        basic, contact = therapist.get("basic_info") or {}, therapist.get("contact") or {}
        found |= {value for value in (basic.get("first_name"), basic.get("last_name"), contact.get("email")) if value}
    return found


def leaks(lines: list[str], secrets: set[str]) -> list[tuple[str, str]]:
    patterns = {secret: re.compile(rf"(?<![\w.-]){re.escape(secret)}(?![\w-])", re.IGNORECASE) for secret in secrets}
    return [(secret, line) for line in lines for secret, pattern in patterns.items() if pattern.search(line)]


@pytest.fixture
def json_logs(make_app, tmp_path, caplog, capsys):
    """Both services' apps logging JSON at DEBUG, with their inputs: the samples plus failing files.
    Yields (patient app, therapist app, a function giving what was written to stderr since)."""
    bucket, inbox = tmp_path / "bucket", tmp_path / "inbox"
    copy_samples(PATIENT_SAMPLES, bucket)
    # Failing registrations, named like real ones: content that is not JSON, a token that is not
    # the file's, and a patient whose e-mail address is invalid.
    (bucket / "mustermann_max_20250707_c0ffee01.json").write_bytes(b'{"patient_data": {"vorname": "Max"')
    sample = json.loads(PATIENT_SAMPLES[0].read_text(encoding="utf-8"))
    (bucket / "mustermann_max_20250708_c0ffee02.json").write_text(json.dumps(sample))
    invalid = json.loads(json.dumps(sample))
    invalid["registration_token"] = "c0ffee03"
    invalid["patient_data"]["email"] = "max.mustermann(at)example.de"
    (bucket / "mustermann_max_20250709_c0ffee03.json").write_text(json.dumps(invalid))
    # Therapists: the sample, a file cut off, and a file where one therapist is invalid (partial).
    copy_samples([THERAPIST_SAMPLE], inbox)
    (inbox / "10115.json").write_bytes(THERAPIST_SAMPLE.read_bytes()[:500])
    scrape = json.loads(THERAPIST_SAMPLE.read_text(encoding="utf-8"))
    scrape["therapists"][0]["contact"]["email"] = "Thomas Zeevaert <not an address>"
    (inbox / "10117.json").write_text(json.dumps(scrape, ensure_ascii=False), encoding="utf-8")

    common = {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG", "ALERT_OUTBOX_DIR": str(tmp_path / "outbox")}
    patients = make_app("patient", PATIENT_IMPORT_SOURCE=str(bucket),
                        PATIENT_IMPORT_BACKUP_DIR=str(tmp_path / "backup"), **common)
    therapists = make_app("therapist", THERAPIST_IMPORT_DIR=str(inbox), THERAPIST_IMPORT_SETTLE_SECONDS=0, **common)
    capsys.readouterr()  # the handler writes to stderr: from here on, what the imports log
    caplog.set_level(logging.DEBUG)
    yield patients, therapists, lambda: capsys.readouterr().err


def run_everything(patients, therapists) -> None:
    for app, expected in ((patients, {"succeeded": 2, "failed": 3}), (therapists, {"succeeded": 1, "partial": 1,
                                                                                    "failed": 1})):
        with app.app_context():
            imports = app.extensions["imports"]
            assert imports.run_pass().by_status == expected
            imports.send_alerts()
        client = app.test_client()
        records = client.get("/api/imports", headers=AUTH).get_json()
        for record in records:
            assert client.get(f"/api/imports/{record['id']}", headers=AUTH).status_code == 200
            if record["status"] == "failed":
                assert client.post(f"/api/imports/{record['id']}/retry", headers=AUTH).status_code == 202
        with app.app_context():
            app.extensions["imports"].run_pass()
        client.get("/api/patients?email=max.mustermann@example.de" if app is patients
                   else "/api/therapists?last_name=Zeevaert", headers=AUTH)
        client.get("/ready")
        client.get("/metrics")


def test_no_log_line_holds_personal_data_or_patient_file_names(json_logs, caplog):
    patients, therapists, stderr = json_logs

    run_everything(patients, therapists)

    captured = [record.getMessage() for record in caplog.records]
    captured += [caplog.handler.format(record) for record in caplog.records]  # with tracebacks, if any
    json_lines = stderr().splitlines()
    assert len(captured) > 20 and len(json_lines) > 20  # the scan saw the imports' lines
    assert any("import #" in line for line in json_lines)
    assert leaks(captured + json_lines, personal_data()) == []


def test_json_lines_parse_and_carry_service_request_id_and_import_id(json_logs):
    patients, therapists, stderr = json_logs

    run_everything(patients, therapists)

    lines = stderr().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert parsed and all(isinstance(entry, dict) and entry.keys() >= JSON_KEYS for entry in parsed)
    assert {entry["service"] for entry in parsed} >= {"patient_service", "therapist_service"}
    assert {entry["level"] for entry in parsed} >= {"INFO", "WARNING"}
    # Lines logged while a file is imported carry its import id, and only those.
    started = [e for e in parsed if re.match(r"\w+: import #\d+ started", e["message"])]
    assert started and all(e["import_id"] == int(re.search(r"#(\d+)", e["message"])[1]) for e in started)
    outcomes = [e for e in parsed if re.search(r"import #\d+ (succeeded|partial|failed)", e["message"])]
    assert outcomes and all(e["import_id"] == int(re.search(r"#(\d+)", e["message"])[1]) for e in outcomes)
    assert any(e["import_id"] is None for e in parsed)
    # The time is ISO 8601 in UTC.
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", e["time"]) for e in parsed)


def test_lines_logged_in_a_request_carry_its_request_id(make_app, capsys):
    therapist_app = make_app("therapist", LOG_FORMAT="json")
    capsys.readouterr()

    @therapist_app.get("/log-something")
    def log_something():
        logging.getLogger("tests").info("inside the request")
        return {}

    response = therapist_app.test_client().get("/log-something", headers={"X-Request-ID": "req-1234"})

    assert response.headers["X-Request-ID"] == "req-1234"
    [entry] = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "inside the request" in line]
    assert entry["request_id"] == "req-1234"
    assert entry["logger"] == "tests"
    assert entry["service"] == "therapist_service"


def test_text_lines_name_the_import_they_were_logged_in(make_app, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    copy_samples([THERAPIST_SAMPLE], inbox)
    app = make_app("therapist", LOG_FORMAT="text", THERAPIST_IMPORT_DIR=str(inbox), THERAPIST_IMPORT_SETTLE_SECONDS=0)
    capsys.readouterr()

    with app.app_context():
        app.extensions["imports"].run_pass()
        logging.getLogger("tests").info("after the import")

    lines = capsys.readouterr().err.splitlines()
    started = [line for line in lines if re.search(r"therapist_service: import #\d+ started", line)]
    assert started
    for line in started:
        import_id = re.search(r"import #(\d+) started", line)[1]
        assert f" INFO [therapist_service import {import_id}] shared.imports.runner: " in line
    [after] = [line for line in lines if line.endswith("after the import")]
    assert " INFO [therapist_service] tests: " in after  # outside an import: no id
