"""Organisation-bound credentials (SPEC §11): a practice calendar writes, lists and reads its own
practice's appointments only; another practice's appointment by id is 404, as if it did not
exist; in a batch, an item naming another practice is that item's error."""
from __future__ import annotations

import uuid

import pytest
from appointments.support import appointment

from .support import ORG_A, ORG_B


@pytest.fixture
def http(client_app):
    return client_app("therapist").test_client()


@pytest.fixture
def calendar_a(clients):
    return clients.auth(f"calendar-{ORG_A}")


@pytest.fixture
def calendar_b(clients):
    return clients.auth(f"calendar-{ORG_B}")


@pytest.fixture
def of_b(http, calendar_b) -> str:
    """An appointment of practice B, written by B's calendar."""
    response = http.post("/api/appointments", json=appointment("b-1", org=ORG_B), headers=calendar_b)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def without_id(body: dict, appointment_id: str) -> dict:
    return {key: str(value).replace(appointment_id, "<id>") for key, value in body.items()}


def test_a_bound_calendar_writes_its_own_organisation_and_a_body_without_org_means_its_own(http, calendar_a):
    body = appointment("a-1")
    del body["orgId"]
    response = http.post("/api/appointments", json=body, headers=calendar_a)
    assert response.status_code == 201
    read = http.get(f"/api/appointments/{response.get_json()['id']}", headers=calendar_a)
    assert read.get_json()["orgId"] == ORG_A


def test_naming_another_organisation_is_403_wrong_organisation_and_writes_nothing(http, calendar_a, clients):
    response = http.post("/api/appointments", json=appointment("x-1", org=ORG_B), headers=calendar_a)
    assert response.status_code == 403
    assert response.get_json()["type"] == "wrong-organisation"
    listed = http.get(f"/api/appointments?org={ORG_B}", headers=clients.auth("everything"))
    assert listed.get_json() == []


def test_a_bound_calendar_lists_its_own_organisation_and_may_not_name_another(http, calendar_a, of_b):
    http.post("/api/appointments", json=appointment("a-1", org=ORG_A), headers=calendar_a)
    own = http.get("/api/appointments", headers=calendar_a)
    assert [a["externalId"] for a in own.get_json()] == ["a-1"]
    assert http.get(f"/api/appointments?org={ORG_A}", headers=calendar_a).status_code == 200
    other = http.get(f"/api/appointments?org={ORG_B}", headers=calendar_a)
    assert other.status_code == 403 and other.get_json()["type"] == "wrong-organisation"
    other_then = http.get(f"/api/appointments?org={ORG_B}&at=2030-01-01T00:00:00Z", headers=calendar_a)
    assert other_then.status_code == 403


@pytest.mark.parametrize("suffix", ["", "?at=2030-01-01T00:00:00Z", "/history"])
def test_another_organisations_appointment_reads_as_404_exactly_like_one_that_does_not_exist(
        http, calendar_a, calendar_b, of_b, suffix):
    assert http.get(f"/api/appointments/{of_b}{suffix}", headers=calendar_b).status_code == 200
    hidden = http.get(f"/api/appointments/{of_b}{suffix}", headers=calendar_a)
    missing_id = str(uuid.uuid4())
    missing = http.get(f"/api/appointments/{missing_id}{suffix}", headers=calendar_a)
    assert hidden.status_code == missing.status_code == 404
    assert without_id(hidden.get_json(), of_b) == without_id(missing.get_json(), missing_id)
    assert "ETag" not in hidden.headers


def test_another_organisations_cancelled_appointment_is_404_not_410(http, calendar_a, calendar_b, of_b):
    assert http.delete(f"/api/appointments/{of_b}", headers=calendar_b).status_code == 204
    assert http.get(f"/api/appointments/{of_b}", headers=calendar_b).status_code == 410
    assert http.get(f"/api/appointments/{of_b}", headers=calendar_a).status_code == 404


def test_cancelling_another_organisations_appointment_is_404_and_cancels_nothing(http, calendar_a, calendar_b, of_b):
    hidden = http.delete(f"/api/appointments/{of_b}", headers=calendar_a)
    assert hidden.status_code == 404
    assert http.get(f"/api/appointments/{of_b}", headers=calendar_b).status_code == 200


@pytest.mark.parametrize("mode", ["batch", "transaction"])
def test_in_a_batch_an_item_of_another_organisation_is_that_items_error(http, calendar_a, clients, mode):
    own = appointment("a-1")
    del own["orgId"]
    items = [own, appointment("a-2", start="2025-07-14 10:00", end="2025-07-14 10:50", org=ORG_A),
             appointment("b-1", org=ORG_B)]
    response = http.post("/api/appointments/batch", json={"mode": mode, "items": items}, headers=calendar_a)
    body = response.get_json()
    if mode == "batch":
        assert response.status_code == 201
        assert [r["action"] for r in body["results"]] == ["created", "created", "error"]
        assert body["results"][2]["errors"][0]["type"] == "wrong-organisation"
    else:
        assert response.status_code == 422
        assert [(e["index"], e["type"]) for e in body["errors"]] == [(2, "wrong-organisation")]
    everything = clients.auth("everything")
    assert http.get(f"/api/appointments?org={ORG_B}", headers=everything).get_json() == []
    written = [a["externalId"] for a in http.get(f"/api/appointments?org={ORG_A}", headers=everything).get_json()]
    assert written == (["a-1", "a-2"] if mode == "batch" else [])


def test_a_credential_with_no_organisation_may_name_any_and_without_a_name_means_default(http, clients):
    everything = clients.auth("everything")
    for org in (ORG_A, ORG_B):
        assert http.post("/api/appointments", json=appointment("x", org=org), headers=everything).status_code == 201
    body = appointment("y")
    del body["orgId"]
    assert http.post("/api/appointments", json=body, headers=everything).status_code == 201
    assert [a["externalId"] for a in http.get("/api/appointments", headers=everything).get_json()] == ["y"]
    assert len(http.get(f"/api/appointments?org={ORG_B}", headers=everything).get_json()) == 1


def test_each_refusal_is_logged_with_the_credentials_name_and_never_its_token(http, calendar_a, clients, caplog):
    http.post("/api/appointments", json=appointment("x-1", org=ORG_B), headers=calendar_a)
    http.get("/api/patients", headers=calendar_a)  # not even a route of this service: 404 after auth
    http.get("/api/imports", headers=calendar_a)
    denials = [r.getMessage() for r in caplog.records if r.name == "shared.auth" and r.levelname == "WARNING"]
    assert any("wrong_organisation" in m and f"calendar-{ORG_A}" in m for m in denials)
    assert any("insufficient_scope" in m and "/api/imports" in m for m in denials)
    assert not any(clients.tokens[f"calendar-{ORG_A}"] in r.getMessage() for r in caplog.records)
