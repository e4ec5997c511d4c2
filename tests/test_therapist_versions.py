"""A therapist's version rows hold exactly what the API shows: the service builds them directly
(not through the schema) for speed, so this is where the two are held together."""
from __future__ import annotations

import json

from conftest import AUTH, SAMPLES

from shared.extensions import db
from therapist_service import services
from therapist_service.schemas import TherapistSchema


def scraped_body(index: int = 0) -> dict:
    entry = json.loads((SAMPLES / "therapist-folder" / "52074.json").read_text())["therapists"][index]
    body = {key: value for key, value in entry.items() if key not in ("id", "status")}
    return {"external_id": entry["id"], **body}


def test_version_written_by_the_bulk_create_is_what_the_api_shows(therapist_app, therapist_client):
    with therapist_app.app_context():
        [therapist_id] = services.create_therapists([TherapistSchema().load(scraped_body())],
                                                    source="import", actor="import:1")
        db.session.commit()

    shown = therapist_client.get(f"/api/therapists/{therapist_id}", headers=AUTH).get_json()
    [version] = therapist_client.get(f"/api/therapists/{therapist_id}/history", headers=AUTH).get_json()
    assert version["data"] == shown
    assert (version["source"], version["actor"]) == ("import", "import:1")


def test_versions_written_by_api_updates_and_deletes_are_what_the_api_showed(therapist_client):
    created = therapist_client.post("/api/therapists", json=scraped_body(1), headers=AUTH).get_json()
    path = f"/api/therapists/{created['id']}"
    patched = therapist_client.patch(path, json={"location": {"city": "Köln"}}, headers=AUTH).get_json()
    assert therapist_client.delete(path, headers=AUTH).status_code == 204

    deleted, updated, first = therapist_client.get(f"{path}/history", headers=AUTH).get_json()
    assert first["data"] == created
    assert updated["data"] == patched
    assert deleted["data"]["deleted_at"] is not None
    assert {k: v for k, v in deleted["data"].items() if k not in ("deleted_at", "updated_at", "version")} \
        == {k: v for k, v in patched.items() if k not in ("deleted_at", "updated_at", "version")}


def test_bulk_creates_report_what_they_wrote_by_table(therapist_app):
    """`TherapistCreates` is a `shared.bulk.PendingWrites`: a flush writes the rows collected since
    the last one, the therapists before their versions, and says how many went to each table."""
    with therapist_app.app_context():
        creates = services.TherapistCreates()
        for index in (2, 3):
            creates.add(TherapistSchema().load(scraped_body(index)), fingerprint=None, source="import",
                        actor="import:1")
        assert creates.flush() == {"therapists": 2, "therapist_versions": 2}
        assert creates.flush() == {}
        [version] = services.therapist_history(creates.ids[0])
        assert version.data == services.representation(services.get_therapist(creates.ids[0]))
        db.session.rollback()
