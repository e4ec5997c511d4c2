"""Import records and the dashboard under least privilege (SPEC §11): a bucket file's name, which
holds the patient's name, only with `patients:read`; dashboard pages need `imports:read`, its
buttons `imports:operate` (shown disabled without it, a forged POST refused)."""
from __future__ import annotations

import re

import pytest
from helpers import add_record

NAME = "2025/07/Mustermann_Erika_7f3a9c.json"
LABEL = "registration 7f3a9c"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(http, token: str):
    page = http.get("/imports/login")
    return http.post("/imports/login", data={"token": token, "csrf_token": csrf_of(page.text)})


@pytest.fixture
def patient_app(client_app):
    return client_app("patient")


@pytest.fixture
def record_id(patient_app) -> int:
    return add_record(patient_app, source="bucket", name=NAME, label=LABEL)


@pytest.mark.parametrize("client, shown", [("only-imports-read", LABEL), ("everything", NAME)])
def test_an_import_records_file_name_is_served_only_with_patients_read(patient_app, clients, record_id,
                                                                       client, shown):
    http = patient_app.test_client()
    listed = http.get("/api/imports", headers=clients.auth(client)).get_json()
    one = http.get(f"/api/imports/{record_id}", headers=clients.auth(client)).get_json()
    assert [r["name"] for r in listed] == [one["name"]] == [shown]
    assert one["label"] == LABEL
    if shown == LABEL:
        assert "Mustermann" not in http.get("/api/imports", headers=clients.auth(client)).text


def test_the_therapist_services_file_names_hold_no_personal_data_and_are_served_with_imports_read(
        client_app, clients):
    app = client_app("therapist")
    add_record(app, name="10115.json", label="10115.json")
    listed = app.test_client().get("/api/imports", headers=clients.auth("only-imports-read")).get_json()
    assert [r["name"] for r in listed] == ["10115.json"]


def test_a_credential_without_imports_read_is_not_signed_in(patient_app, clients):
    http = patient_app.test_client()
    response = sign_in(http, clients.tokens["only-imports-operate"])
    assert response.status_code == 403 and "imports:read" in response.text
    assert http.get("/imports").status_code == 302  # still signed out


def test_without_imports_operate_the_buttons_are_disabled_and_a_forged_post_is_refused(
        patient_app, clients, record_id):
    from shared.extensions import db

    Record = patient_app.extensions["imports"].models.record
    with patient_app.app_context():
        db.session.get(Record, record_id).status = "failed"
        db.session.commit()
    http = patient_app.test_client()
    assert sign_in(http, clients.tokens["only-imports-read"]).status_code == 302
    page = http.get("/imports")
    assert page.status_code == 200
    assert re.search(r'<button type="submit" class="small" disabled title="Needs the scope imports:operate"',
                     page.text)
    assert "Run now</button>" in page.text and 'title="Needs the scope imports:operate"' in page.text
    for path in ("/imports/run", f"/imports/{record_id}/retry"):
        forged = http.post(path, data={"csrf_token": csrf_of(page.text)})
        assert forged.status_code == 403, path
        assert "imports:operate" in forged.text
    with patient_app.app_context():
        assert db.session.get(Record, record_id).status == "failed"
        assert patient_app.extensions["imports"].models.state.query.first() is None


def test_with_imports_operate_the_buttons_work(patient_app, clients, record_id):
    http = patient_app.test_client()
    assert sign_in(http, clients.tokens["everything"]).status_code == 302
    page = http.get("/imports")
    assert 'title="Needs the scope imports:operate"' not in page.text
    assert http.post("/imports/run", data={"csrf_token": csrf_of(page.text)}).status_code == 302
    with patient_app.app_context():
        assert patient_app.extensions["imports"].models.state.query.first() is not None
