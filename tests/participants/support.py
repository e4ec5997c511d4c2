"""What the participant tests share: the samples, sending a batch, counting rows."""
from __future__ import annotations

import json
from typing import Any

from conftest import AUTH, SAMPLES
from sqlalchemy import text

PATH = "/api/appointments/participants"
REPRESENTATION = {**AUTH, "Prefer": "return=representation"}
PROBLEM = "application/problem+json"


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / "participants" / f"{name}.json").read_text())


def person(n: int = 0, **overrides: Any) -> dict[str, Any]:
    item = {"participantId": f"temp-{n:03d}", "firstName": f"Jana{n}", "lastName": "Schmitz",
            "email": f"jana{n}@example.de", "phone": "0241 4711", "mid": None, "username": f"jana{n}",
            "attendanceStatus": "Registered", "metadata": {"eventId": "event-1"}}
    item.update(overrides)
    return item


def send(client, *participants: dict[str, Any], headers: dict[str, str] = REPRESENTATION, **envelope: Any):
    return client.post(PATH, json={"participants": list(participants), **envelope}, headers=headers)


def rows(admin_engine, query: str, **params: Any) -> list[Any]:
    with admin_engine.connect() as conn:
        return list(conn.execute(text(query), params))


def count(admin_engine, table: str) -> int:
    return rows(admin_engine, f"SELECT count(*) FROM therapist_service.{table}")[0][0]


def problem_errors(response, status: int = 400) -> list[dict[str, Any]]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    return response.get_json(force=True).get("errors", [])
