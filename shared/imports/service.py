"""One service's import set-up, kept on the app as `app.extensions["imports"]`.

A service describes its importer with an `ImporterSpec` (its tables, its source, its file
handler, its timings); `install` hangs it on the app; `start` runs it in the background.
The REST endpoints, the CLI, the dashboard at `/imports` and the background worker all go
through this object; it is also the app's background component "importer" for `/health` and
`/ready` (shared/background/__init__.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Flask
from sqlalchemy import select

from shared import metrics
from shared.background import ComponentReport, Problem, read_state, register_component
from shared.config import Settings
from shared.db import unit_of_work
from shared.extensions import db
from shared.imports.alerts import AlertSender
from shared.imports.handler import FileHandler
from shared.imports.models import ImporterStateMixin, ImportModels, ImportRecordMixin, importer_state
from shared.imports.records import retry_record
from shared.imports.runner import ImportRunner, PassSummary
from shared.imports.types import Source
from shared.logs import describe_exception
from shared.schemas import now_utc

if TYPE_CHECKING:
    from shared.imports.worker import BackgroundImporter

log = logging.getLogger(__name__)


@dataclass
class ImporterSpec:
    service: str
    models: ImportModels
    make_source: Callable[[Settings], Source | None]  # None: no source configured, importer off
    handler: FileHandler
    poll_seconds: Callable[[Settings], float]
    retry_input_errors: bool  # bucket files are retried; a bad folder file waits for a new version
    missing_source_hint: str
    # Upkeep after every full pass, in the process that imports (the patient service's pending
    # erasure deletions and retention): its failure is logged and never stops the importer.
    after_pass: Callable[[], Any] | None = None
    # The scope a credential needs to see a record's file `name` in `GET /api/imports…` (SPEC §11:
    # a bucket file's name holds the patient's name); without it the `label` stands in. None: the
    # names hold no personal data (the scraper's files), everyone with `imports:read` sees them.
    name_scope: str | None = None


class ImportsExtension:
    name = "importer"  # its key in the /ready body

    def __init__(self, app: Flask, spec: ImporterSpec):
        self.app = app
        self.spec = spec
        self.service = spec.service
        self.models = spec.models
        self.settings: Settings = app.extensions["settings"]
        self.source = spec.make_source(self.settings)
        self.poll_seconds = spec.poll_seconds(self.settings)
        self.worker: BackgroundImporter | None = None
        self.alert_sender = AlertSender(self.settings, spec.models.alert)

    @property
    def configured(self) -> bool:
        return self.source is not None

    def runner(self, still_leader: Callable[[], bool] = lambda: True) -> ImportRunner:
        if self.source is None:
            raise RuntimeError(f"{self.service}: no import source configured ({self.spec.missing_source_hint})")
        return ImportRunner(
            service=self.service, source=self.source, handler=self.spec.handler, models=self.models,
            max_file_bytes=self.settings.IMPORT_MAX_FILE_BYTES,
            max_attempts=self.settings.PATIENT_IMPORT_MAX_ATTEMPTS,
            retry_base_seconds=self.poll_seconds, retry_input_errors=self.spec.retry_input_errors,
            still_leader=still_leader,
            on_record_finished=lambda record, seconds: metrics.observe_import(self.service, record, seconds))

    def run_pass(self, files: Any = None, *, still_leader: Callable[[], bool] = lambda: True) -> PassSummary:
        summary = self.runner(still_leader).run_pass(files)
        if files is None and self.spec.after_pass is not None and still_leader():
            try:
                self.spec.after_pass()
            except Exception as error:  # noqa: BLE001 — upkeep is retried after the next pass
                db.session.rollback()
                log.error("%s: upkeep after the import pass failed: %s", self.service, describe_exception(error))
        return summary

    def send_alerts(self) -> int:
        sent = self.alert_sender.send_pending()
        metrics.observe_alerts_sent(self.service, sent)
        return sent

    def state_row(self, *, for_update: bool = False) -> ImporterStateMixin:
        return importer_state(self.models.state, for_update=for_update)

    def request_run(self) -> datetime | None:
        """Ask for a pass now. Whichever process holds the lock picks it up within a second."""
        with unit_of_work():
            state = self.state_row(for_update=True)
            state.run_requested_at = now_utc()
        if self.worker is not None and self.worker.is_leader:
            self.worker.request_full_pass()
        return state.run_requested_at

    def retry(self, import_id: int) -> ImportRecordMixin:
        """Clear a failed or quarantined import (its attempt count starts afresh), then ask for a
        pass. What `POST /api/imports/<id>/retry` and the dashboard's Retry button do.
        Raises `NotFound`, or `Conflict` for an import that is not failed or quarantined."""
        with unit_of_work():
            record = retry_record(self.models.record, import_id)
        self.request_run()
        return record

    def death(self) -> Problem | None:
        """The importer was started in this process but its worker thread or its clock has stopped."""
        if self.worker is None:
            return None
        if self.worker.thread is None or not self.worker.thread.is_alive():
            return Problem("importer", "importer thread dead")
        if self.worker.scheduler is None or not self.worker.scheduler.running:
            return Problem("importer", "importer clock stopped")
        return None

    def report(self, *, database_ok: bool) -> ComponentReport:
        if not self.configured:
            return ComponentReport({"configured": False})
        state: dict[str, Any] = {"configured": True, "started": self.worker is not None}
        warnings: list[Problem] = []
        if self.worker is not None:
            next_poll = self.worker.next_poll_at()
            state.update(alive=self.worker.alive(), leader=self.worker.is_leader,
                         next_poll_at=next_poll.isoformat() if next_poll else None)
            if (death := self.death()) is not None:
                warnings.append(death)
        if database_ok:
            State = self.models.state
            rows, error = read_state(select(State.lock_holder, State.lock_heartbeat_at, State.last_success_at,
                                            State.source_down_since).where(State.id == 1))
            if error is not None:
                state["state_error"] = error
                return ComponentReport(state, warnings)
            state.update(rows[0] or {})
            if state.get("source_down_since") and self.source is not None:
                warnings.append(Problem("source", f"source ({self.source.description}) unreachable since "
                                                  f"{state['source_down_since']}"))
        return ComponentReport(state, warnings)

    def start(self) -> None:
        from shared.imports.worker import BackgroundImporter

        if self.source is None:
            log.warning("%s importer off: %s", self.service, self.spec.missing_source_hint)
            return
        worker = self.worker = BackgroundImporter(self.app, self)
        worker.start()
        self.app.extensions["importer_stop"] = worker.stop

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def install(app: Flask, spec: ImporterSpec) -> ImportsExtension:
    from shared.imports.cli import imports_cli

    extension = ImportsExtension(app, spec)
    app.extensions["imports"] = extension
    register_component(app, extension)
    app.cli.add_command(imports_cli)
    return extension
