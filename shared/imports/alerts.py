"""Alert e-mails to on-call (SPEC §7.3).

An alert is a row written in the same transaction as the state it reports, under a unique key
(import id + what happened), so every worker agrees it was raised once. A sender delivers
unsent rows: over SMTP when `SMTP_HOST` is set, otherwise as `.eml` files in `ALERT_OUTBOX_DIR`.
When SMTP is down the row stays unsent and is tried again; an import never fails because of
e-mail. Subjects and bodies carry ids, statuses, counts and error kinds — no personal data.

`Outage` latches an outage of something the service depends on (the import source) on a
`*_down_since` column of a state row: one alert when it goes down, one when it answers again.
"""
from __future__ import annotations

import logging
import os
import smtplib
import ssl
import tempfile
from collections import Counter
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from shared.config import Settings
from shared.extensions import db
from shared.imports.models import AlertMixin, ImportRecordMixin
from shared.logs import describe_exception
from shared.schemas import now_utc

log = logging.getLogger(__name__)


def import_alert(service: str, record: ImportRecordMixin, *, source_description: str) -> tuple[str, str]:
    """Subject and body for an import that failed, is partial or is quarantined."""
    kinds = Counter(error.get("kind", "error") for error in record.errors)
    lines = [
        f"Service: {service}",
        f"Import: #{record.id}",
        f"Status: {record.status}",
        f"File: {record.label}",
        f"Source: {source_description}",
        f"Attempts: {record.attempts}",
        "Errors: " + (", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items())) or "none"),
        "Counts: " + ", ".join(f"{key} {value}" for key, value in record.counts.items()),
    ]
    if record.warnings:
        lines.append(f"Warnings: {len(record.warnings)}")
    if record.next_attempt_at is not None:
        lines.append(f"Next attempt: {record.next_attempt_at.isoformat(timespec='seconds')}")
    elif record.status == "quarantined":
        lines.append("Next attempt: none — quarantined until the file changes or someone retries it")
    lines += [
        f"Record: GET /api/imports/{record.id}",
        f"Retry: POST /api/imports/{record.id}/retry",
        "",
        "The import record lists each error with its item and field. See the runbook, docs/operations.md.",
    ]
    return f"[{service}] import {record.status}: #{record.id}", "\n".join(lines) + "\n"


def alert_import(model: type[AlertMixin], service: str, record: ImportRecordMixin, *, source_description: str) -> None:
    """In the record's transaction: the alert for its new status, once per status and retry round."""
    subject, body = import_alert(service, record, source_description=source_description)
    enqueue(model, f"import:{record.id}:{record.retry_round}:{record.status}", subject, body)


def alert_observer_restarted(model: type[AlertMixin], service: str, *, by: str) -> None:
    """In the current transaction: the folder's watchdog observer had stopped and `by` restarted it."""
    now = now_utc()
    subject = f"[{service}] folder watcher restarted"
    body = (f"Service: {service}\nThe watchdog observer of the import folder had stopped "
            f"and was restarted at {now.isoformat(timespec='seconds')} by {by}.\n"
            "A full rescan was started, so no file is missed. If this repeats, see the runbook, docs/operations.md.\n")
    enqueue(model, f"observer:restarted:{now.isoformat()}", subject, body)


def source_alert(service: str, *, down: bool, source_description: str, since: datetime,
                 error_kind: str | None = None) -> tuple[str, str]:
    state = "unreachable" if down else "reachable again"
    lines = [f"Service: {service}", f"Source: {source_description}",
             f"Unreachable since: {since.isoformat(timespec='seconds')}"]
    if error_kind:
        lines.append(f"Error: {error_kind}")
    lines.append("Imports resume by themselves once the source answers; see the runbook, docs/operations.md.")
    return f"[{service}] import source {state}", "\n".join(lines) + "\n"


def enqueue(model: type[AlertMixin], key: str, subject: str, body: str) -> None:
    """Record an alert in the current transaction, unless one with `key` exists already."""
    db.session.execute(insert(model).values(key=key, subject=subject, body=body, created_at=now_utc(),
                                            send_attempts=0).on_conflict_do_nothing(index_elements=["key"]))


class AlertSender:
    def __init__(self, settings: Settings, model: type[AlertMixin]):
        self.settings = settings
        self.model = model

    def send_pending(self, limit: int = 50) -> int:
        """Deliver unsent alerts (call inside an app context). Returns how many went out."""
        sent = 0
        rows: Any = db.session.scalars(select(self.model).where(self.model.sent_at.is_(None))
                                  .order_by(self.model.id).limit(limit).with_for_update(skip_locked=True)).all()
        for alert in rows:
            alert.send_attempts += 1
            try:
                self._deliver(alert)
            except (OSError, smtplib.SMTPException) as error:
                alert.last_error = describe_exception(error)
                log.warning("alert %s not sent (%s); kept for the next try", alert.id, alert.last_error)
                break  # the server is down: keep the rest for later, in order
            alert.sent_at = now_utc()
            alert.last_error = None
            sent += 1
            log.info("alert %s sent: %s", alert.id, alert.subject)
        db.session.commit()
        return sent

    def _message(self, alert: Any) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = alert.subject
        message["From"] = self.settings.ALERT_EMAIL_FROM
        message["To"] = ", ".join(self.settings.ALERT_EMAIL_TO)
        message["Date"] = formatdate(alert.created_at.timestamp(), usegmt=True)
        message["Message-ID"] = make_msgid(idstring=f"alert-{alert.id}")
        message.set_content(alert.body)
        return message

    def _deliver(self, alert: Any) -> None:
        message = self._message(alert)
        settings = self.settings
        if not settings.SMTP_HOST:
            self._write_to_outbox(alert, message)
            return
        with smtplib.SMTP(settings.SMTP_HOST, settings.SMTP_PORT, timeout=settings.SMTP_TIMEOUT) as smtp:
            if settings.SMTP_STARTTLS:
                smtp.starttls(context=ssl.create_default_context())
            if settings.SMTP_USERNAME:
                smtp.login(settings.SMTP_USERNAME, settings.SMTP_PASSWORD or "")
            smtp.send_message(message)

    def _write_to_outbox(self, alert: Any, message: EmailMessage) -> None:
        outbox = Path(self.settings.ALERT_OUTBOX_DIR)
        outbox.mkdir(parents=True, exist_ok=True)
        target = outbox / f"alert-{alert.id:08d}.eml"
        fd, temporary = tempfile.mkstemp(dir=outbox, prefix=".alert-", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(bytes(message))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        log.warning("no SMTP_HOST: alert %s written to %s (%s)", alert.id, target, alert.subject)
