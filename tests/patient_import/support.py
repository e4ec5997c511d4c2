"""Helpers for the patient bucket importer tests: registration files, the uploader's side of the
bucket, driving passes, and reading results through the API.

Waiting is always "poll until, with a deadline", never a fixed sleep.
"""
from __future__ import annotations

import copy
import json
from typing import Any

from conftest import AUTH, SAMPLES
from helpers import wait_until  # noqa: F401  (re-exported for the tests here)

BUCKET = "inbox"
SAMPLE_DIR = SAMPLES / "patient-bucket"
MAX = "mustermann_max_20250705_0b1ab67b.json"
JUERGEN = "groesser_juergen-marie_20250706_a91f03cc.json"
FINAL = ("succeeded", "partial", "failed", "quarantined")
TIMEOUT = 15.0


def sample_bytes(name: str) -> bytes:
    return (SAMPLE_DIR / name).read_bytes()


def sample(name: str = MAX) -> dict[str, Any]:
    return json.loads(sample_bytes(name))


def registration(token: str, base: str = MAX, **patient_changes: Any) -> dict[str, Any]:
    """A registration file modelled on a sample, with its own token and some patient fields changed."""
    document = copy.deepcopy(sample(base))
    document["registration_token"] = token
    document["patient_data"].update(patient_changes)
    return document


def object_name(document: dict[str, Any], date: str = "20250705") -> str:
    """The name the registration site gives a file: `{nachname}_{vorname}_{YYYYMMDD}_{token}.json`."""
    data = document["patient_data"]
    return f"{data['nachname'].lower()}_{data['vorname'].lower()}_{date}_{document['registration_token']}.json"


def encode(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


class Gcs:
    """The registration site's side of the bucket: the real client against the emulator."""

    def __init__(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.client = storage.Client(project="test", credentials=AnonymousCredentials())
        self.bucket = self.client.bucket(BUCKET)

    def upload(self, name: str, content: bytes | dict[str, Any]) -> int:
        """Upload `content` as `name`; returns the new generation."""
        blob = self.bucket.blob(name)
        blob.upload_from_string(content if isinstance(content, bytes) else encode(content),
                                content_type="application/json")
        return int(blob.generation)

    def names(self) -> list[str]:
        return sorted(blob.name for blob in self.client.list_blobs(self.bucket))

    def generation(self, name: str) -> int | None:
        blob = self.bucket.get_blob(name)
        return int(blob.generation) if blob else None

    def read(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()


def run_pass(app, files=None) -> Any:
    """One pass, as the worker thread runs it, then the alerts it raised are sent."""
    with app.app_context():
        imports = app.extensions["imports"]
        summary = imports.run_pass(files)
        imports.send_alerts()
        return summary


def get_json(client, path: str, status: int = 200) -> Any:
    response = client.get(path, headers=AUTH)
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def imports(client) -> list[dict[str, Any]]:
    """Every import record, oldest first."""
    return sorted(get_json(client, "/api/imports?page_size=100"), key=lambda r: r["id"])


def imports_of(client, name: str) -> list[dict[str, Any]]:
    return [record for record in imports(client) if record["name"] == name]


def the_import(client, name: str) -> dict[str, Any]:
    records = imports_of(client, name)
    assert len(records) == 1, records
    return records[0]


def patients(client, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    return get_json(client, f"/api/patients?page_size=100&{query}")


def patient_history(client, patient_id: int) -> list[dict[str, Any]]:
    return get_json(client, f"/api/patients/{patient_id}/history")
