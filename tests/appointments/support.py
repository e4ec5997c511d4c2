"""What the appointment tests share: request bodies and the calls they make."""
from __future__ import annotations

import json

from conftest import AUTH, SAMPLES
from sqlalchemy import text

ORG = "praxis-67"


def appointment(external_id="apt-1", start="2025-07-14 09:00", end="2025-07-14 09:50",
                updated_at="2025-07-01 08:00:00", org=ORG, **overrides):
    body = {"id": external_id, "orgId": org, "start": start, "end": end,
            "createdAt": "2025-07-01 08:00:00", "updatedAt": updated_at}
    body.update(overrides)
    return body


def sample_appointments() -> list[dict]:
    return json.loads((SAMPLES / "appointments" / "praxis-67.json").read_text(encoding="utf-8"))


def post(client, body, headers=AUTH):
    return client.post("/api/appointments", json=body, headers=headers)


def created(client, body) -> str:
    response = post(client, body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def listed(client, query="", headers=AUTH) -> list[dict]:
    response = client.get(f"/api/appointments?org={ORG}{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def stored_rows(admin_engine) -> list[dict]:
    with admin_engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(
            "SELECT id, org_id, external_id, start, \"end\", payload_updated_at, version, deleted_at "
            "FROM therapist_service.appointments ORDER BY start")).mappings()]


def version_count(admin_engine) -> int:
    with admin_engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM therapist_service.appointment_versions"))
