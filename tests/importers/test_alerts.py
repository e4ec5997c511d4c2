"""Alert e-mails for therapist imports (SPEC §7.3), received by a real SMTP server on loopback:
what they say and do not say, one per failing file, and kept while the SMTP server is down."""
from __future__ import annotations

from .support import SAMPLE, alert_rows, drop, imports_of, request_rescan, sample_document, wait_for_import, wait_until


def _every_therapist_invalid() -> dict:
    document = sample_document()
    for item in document["therapists"]:
        item["location"]["postcode"] = "520"
    return document


def test_alert_names_the_import_and_its_errors_but_no_personal_data(inbox, client, smtp_server):
    document = _every_therapist_invalid()
    drop(inbox, "52074.json", document)

    record = wait_for_import(client)
    [mail] = smtp_server.wait_for(1)

    assert record["status"] == "failed"
    assert record["counts"]["failed"] == len(document["therapists"])
    assert mail["Subject"] == f"[therapist_service] import failed: #{record['id']}"
    assert mail["To"] == "info@curavani.com"
    body = mail.get_content()
    for line in (f"Import: #{record['id']}", "Status: failed", "Attempts: 1",
                 f"Errors: validation: {len(document['therapists'])}", f"/api/imports/{record['id']}"):
        assert line in body
    personal = {item[group][key] for item in document["therapists"]
                for group, key in (("basic_info", "first_name"), ("basic_info", "last_name"), ("contact", "email"))}
    everything = "\n".join([str(mail["Subject"]), body, mail.as_string()])
    assert [value for value in personal if value in everything] == []


def test_alert_is_kept_while_smtp_is_down_and_delivered_when_it_is_back(inbox, start_importer, smtp_server,
                                                                         admin_engine):
    smtp_server.stop()
    app = start_importer()
    client = app.test_client()

    drop(inbox, "52074.json", b"{not json")
    record = wait_for_import(client)
    [alert] = wait_until(lambda: [a for a in alert_rows(admin_engine) if a["send_attempts"] >= 1],
                         what="a failed attempt to send the alert")

    assert record["status"] == "failed"
    assert [e["kind"] for e in record["errors"]] == ["not-json"]  # the import did not fail because of e-mail
    assert alert["sent_at"] is None
    assert "ConnectionRefusedError" in alert["last_error"]
    assert smtp_server.messages == []

    smtp_server.start()
    with app.app_context():
        app.extensions["imports"].send_alerts()

    [mail] = smtp_server.wait_for(1)
    assert mail["Subject"] == f"[therapist_service] import failed: #{record['id']}"
    [alert] = alert_rows(admin_engine)
    assert alert["sent_at"] is not None


def test_one_alert_per_failing_file_however_many_rescans(inbox, client, smtp_server, admin_engine):
    drop(inbox, "52074.json", SAMPLE.read_bytes()[:100])
    record = wait_for_import(client)
    smtp_server.wait_for(1)

    for _ in range(3):
        request_rescan(client, admin_engine)

    assert [(r["id"], r["status"], r["attempts"]) for r in imports_of(client, "52074.json")] == [
        (record["id"], "failed", 1)]
    assert len(alert_rows(admin_engine)) == 1
    assert [str(m["Subject"]) for m in smtp_server.messages] == [
        f"[therapist_service] import failed: #{record['id']}"]
