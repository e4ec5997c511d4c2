"""Helpers for the importer tests: scrape documents, dropping files, and waiting for outcomes.

Waiting is always "poll until, with a deadline": an import is done when its record reaches a
final status, never after a fixed sleep.
"""
from __future__ import annotations

import copy
import json
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import AUTH, SAMPLES
from helpers import wait_until
from sqlalchemy import text

SAMPLE = SAMPLES / "therapist-folder" / "52074.json"
FINAL = ("succeeded", "partial", "failed", "quarantined")
TIMEOUT = 15.0


def sample_document() -> dict[str, Any]:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def therapist(external_id: str, status: str = "new", last_modified: str = "2025-07-02T03:13:24",
              **groups: Any) -> dict[str, Any]:
    """A scraped therapist modelled on the sample's first one; `groups` replace whole groups.
    Each id is another person (its own last name), so no two share a practice identity (SPEC §7.2.6)."""
    item = copy.deepcopy(sample_document()["therapists"][0])
    item.update(id=external_id, status=status, last_modified=last_modified)
    item["basic_info"]["last_name"] = f"Zeevaert-{external_id}"
    item["contact"]["email"] = f"{external_id}@example.de"
    item.update(groups)
    return item


def scrape(*therapists: dict[str, Any], total: int | None = None) -> dict[str, Any]:
    """A scrape document; a fresh `scrape_id` each time, so equal lists still differ in content."""
    return {"metadata": {"scrape_id": f"52XXX_{uuid.uuid4().hex[:8]}", "scrape_date": "2025-07-02T03:13:24",
                         "postcode_area": "52XXX",
                         "total_therapists": len(therapists) if total is None else total},
            "therapists": list(therapists)}


def encode(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


def drop(folder: Path, name: str, content: bytes | dict | list) -> Path:
    """Put a complete file into `folder` the way a careful writer does: a hidden temporary, then a rename."""
    payload = content if isinstance(content, bytes) else encode(content)
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:6]}.tmp"
    temporary.write_bytes(payload)
    os.replace(temporary, target)
    return target


def imports(client) -> list[dict[str, Any]]:
    response = client.get("/api/imports?page_size=100", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def imports_of(client, name: str) -> list[dict[str, Any]]:
    """Import records of the file `name`, oldest first."""
    return sorted((r for r in imports(client) if r["name"] == name), key=lambda r: r["id"])


def wait_for_import(client, name: str = "52074.json", *, after: int = 0, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The first record of `name` with an id above `after` once it has reached a final status."""
    def done():
        for record in imports_of(client, name):
            if record["id"] > after and record["status"] in FINAL:
                return record
        return None

    return wait_until(done, timeout=timeout, what=f"an import of {name} to finish")


def last_import_id(client) -> int:
    return max((r["id"] for r in imports(client)), default=0)


def drop_barrier(folder: Path, client) -> dict[str, Any]:
    """Drop an empty scrape as `99999.json` and wait for its import.

    Files dropped before it settle no later than it does and are handed to the single worker
    thread no later than it is, so once it is imported they have been looked at.
    """
    after = last_import_id(client)
    drop(folder, "99999.json", scrape())
    record = wait_for_import(client, "99999.json", after=after)
    assert record["status"] == "succeeded", record
    return record


def therapists(client, external_id: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    query = f"/api/therapists?external_id={external_id}" + ("&include_deleted=true" if include_deleted else "")
    response = client.get(query, headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def the_therapist(client, external_id: str) -> dict[str, Any]:
    found = therapists(client, external_id, include_deleted=True)
    assert len(found) == 1, found
    return found[0]


def history(client, therapist_id: int) -> list[dict[str, Any]]:
    response = client.get(f"/api/therapists/{therapist_id}/history", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def all_therapists(client) -> list[dict[str, Any]]:
    response = client.get("/api/therapists?include_deleted=true&page_size=100", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def importer_state(admin_engine) -> dict[str, Any]:
    with admin_engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM therapist_service.importer_state WHERE id = 1")).mappings().first()
    return dict(row) if row else {}


def alert_rows(admin_engine) -> list[dict[str, Any]]:
    with admin_engine.connect() as connection:
        return [dict(row) for row in connection.execute(text(
            "SELECT key, subject, sent_at, send_attempts, last_error FROM therapist_service.alerts ORDER BY id"))
            .mappings()]


def request_rescan(client, admin_engine) -> None:
    """`POST /api/imports/run`, then wait until a pass that started after the request has finished."""
    response = client.post("/api/imports/run", headers=AUTH)
    assert response.status_code == 202, response.get_data(as_text=True)
    requested = datetime.fromisoformat(response.get_json()["requested_at"])

    def pass_done():
        state = importer_state(admin_engine)
        started, finished = state.get("last_pass_started_at"), state.get("last_pass_finished_at")
        return started is not None and finished is not None and requested < started <= finished

    wait_until(pass_done, what="a pass started after the run request to finish")
