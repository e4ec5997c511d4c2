"""The background importer of one process: a clock (APScheduler) and one worker thread.

- The scheduler's `heartbeat` job (every second) keeps or takes the lead (the importer lock and
  the holder's heartbeat, shared/background/leading.py), notices run requests from any worker
  (`POST /api/imports/run` writes them to the database), hands settled folder files to the
  worker, and restarts a dead folder observer.
- The `poll` job (every `poll_seconds`; `coalesce`, `max_instances=1`, no misfire limit, so a
  late run is run, not dropped) asks for a full pass: a bucket poll or a folder rescan.
- `alerts` (every 30 s) sends alerts the SMTP server refused earlier.
- The worker thread runs passes one after another, only while this process holds the lock.
  Only it imports, so jobs never wait on an import and never pile up.
- A file that failed for a transient reason (lost database connection, I/O error) is handed to
  the worker again at its retry time, seconds later (a one-off `retry:<name>` job); a pass that
  broke off for such a reason is run again after 2, 4, 8 … seconds (at most `poll_seconds`).
"""
from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask
from sqlalchemy import select

from shared import metrics
from shared.background.leading import Lead, Leadership
from shared.background.outage import Backoff, doubling
from shared.db import unit_of_work
from shared.extensions import db
from shared.imports import alerts
from shared.imports.records import MAX_DOUBLINGS, TRANSIENT_BACKOFF, is_transient
from shared.imports.types import SourceFile, WatchedSource
from shared.logs import describe_exception
from shared.schemas import now_utc

log = logging.getLogger(__name__)

FULL_PASS = "full-pass"
STOP = "stop"
HEARTBEAT_SECONDS = 1.0
ALERT_RETRY_SECONDS = 30.0
LEADER_NOTE_SECONDS = 5.0


class BackgroundImporter:
    def __init__(self, app: Flask, imports: Any):
        self.app = app
        self.imports = imports  # the app's ImportsExtension
        self.leadership = Leadership(_engine(app), imports.service, role="importer", service=imports.service,
                                     heartbeat_seconds=LEADER_NOTE_SECONDS, note_holder=self._note_holder)
        self.scheduler: BackgroundScheduler | None = None
        self.thread: threading.Thread | None = None
        self.work: queue.Queue[str | list[SourceFile]] = queue.Queue()
        self.stopping = threading.Event()
        self.full_pass_queued = threading.Event()
        self.last_pass_at: datetime | None = None
        self.last_request_seen: datetime | None = None
        self.observer_restarts = 0
        # Passes in a row that broke off for a transient reason: run again after 2, 4, 8 … seconds.
        self.broken_passes = Backoff(doubling(TRANSIENT_BACKOFF.total_seconds(), imports.poll_seconds,
                                              doublings=MAX_DOUBLINGS))

    # ---- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.stopping.clear()
        self.thread = threading.Thread(target=self._work_loop, name=f"importer-{self.imports.service}",
                                       daemon=True)
        self.thread.start()
        self.scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(3)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        now = datetime.now(UTC)
        self.scheduler.add_job(self._heartbeat, "interval", seconds=HEARTBEAT_SECONDS, id="heartbeat",
                               next_run_time=now)
        self.scheduler.add_job(self.request_full_pass, "interval", seconds=self.imports.poll_seconds,
                               id="poll", next_run_time=now + timedelta(seconds=self.imports.poll_seconds))
        self.scheduler.add_job(self._send_alerts, "interval", seconds=ALERT_RETRY_SECONDS, id="alerts")
        self.scheduler.start()
        log.info("background importer started (%s, full pass every %ss)", self.imports.source.description,
                 self.imports.poll_seconds)

    def stop(self) -> None:
        """Stop cleanly: no new pass, the current file finishes, the lock is released."""
        if self.stopping.is_set() and self.thread is None:
            return
        self.stopping.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.scheduler = None
        self.work.put(STOP)
        if self.thread is not None:
            self.thread.join(timeout=60)
            self.thread = None
        self._step_down()
        self.leadership.release()
        self._report()

    # ---- what the API and the jobs ask for ------------------------------------------------------

    def request_full_pass(self) -> None:
        if not self.full_pass_queued.is_set():
            self.full_pass_queued.set()
            self.work.put(FULL_PASS)

    @property
    def is_leader(self) -> bool:
        return self.leadership.held

    @property
    def identity(self) -> str:
        return self.leadership.identity

    @property
    def last_leader_note(self) -> datetime | None:
        return self.leadership.noted_at

    def alive(self) -> bool:
        return (self.thread is not None and self.thread.is_alive()
                and self.scheduler is not None and self.scheduler.running)

    def next_poll_at(self) -> datetime | None:
        job = self.scheduler.get_job("poll") if self.scheduler else None
        return job.next_run_time if job else None

    # ---- jobs ----------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        if self.stopping.is_set():
            return
        with self.app.app_context():
            try:
                self._keep_or_take_lead()
                self._report()
                if not self.is_leader:
                    return
                self.leadership.beat()
                self._pick_up_run_request()
                source = self.imports.source
                if isinstance(source, WatchedSource):
                    self._watch_observer(source)
                    ready = source.ready_files()
                    if ready:
                        self.work.put(ready)
            except Exception as error:  # noqa: BLE001 — the clock must keep ticking
                db.session.rollback()
                log.warning("importer heartbeat: %s", describe_exception(error))

    def _keep_or_take_lead(self) -> None:
        lead = self.leadership.lead()
        if lead is Lead.LOST:
            self._step_down()
        elif lead is Lead.TAKEN:
            if isinstance(self.imports.source, WatchedSource):
                self.imports.source.start_watching()
            self.request_full_pass()  # files present at start, or left by the previous holder

    def _report(self) -> None:
        """This process's importer gauges (lock held, files waiting) for /metrics."""
        waiting = None  # nobody watches a bucket
        if isinstance(self.imports.source, WatchedSource):
            waiting = self.imports.source.waiting() if self.is_leader else 0
        metrics.observe_importer(self.imports.service, leader=self.is_leader, files_waiting=waiting)

    def _step_down(self) -> None:
        if isinstance(self.imports.source, WatchedSource):
            self.imports.source.stop_watching()

    def _note_holder(self, identity: str, now: datetime) -> None:
        state = self.imports.state_row(for_update=True)
        state.lock_holder = identity
        state.lock_heartbeat_at = now

    def _pick_up_run_request(self) -> None:
        requested = db.session.scalar(select(self.imports.models.state.run_requested_at)
                                      .where(self.imports.models.state.id == 1))
        db.session.rollback()
        if requested is not None and (self.last_request_seen is None or requested > self.last_request_seen):
            self.last_request_seen = requested
            self.request_full_pass()

    def _watch_observer(self, source: WatchedSource) -> None:
        if source.observer_alive():
            return
        self.observer_restarts += 1
        log.error("the folder observer died; restarting it (restart %s)", self.observer_restarts)
        source.stop_watching()
        source.start_watching()
        self.request_full_pass()  # events may have been lost while it was down
        with unit_of_work():
            alerts.alert_observer_restarted(self.imports.models.alert, self.imports.service, by=self.identity)

    def _send_alerts_soon(self) -> None:
        """Mail new alerts now, from the scheduler's thread: a slow SMTP server must not hold up
        the next import."""
        job = self.scheduler.get_job("alerts") if self.scheduler else None
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def _send_alerts(self) -> None:
        if self._still_leader():
            with self.app.app_context():
                self.imports.send_alerts()

    # ---- the worker thread -----------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            item = self.work.get()
            if item == STOP or self.stopping.is_set():
                return
            if item == FULL_PASS:
                self.full_pass_queued.clear()
            if not self.is_leader:
                continue
            with self.app.app_context():
                try:
                    summary = self.imports.run_pass(None if item == FULL_PASS else item,
                                                    still_leader=self._still_leader)
                    self.last_pass_at = now_utc()
                    self.broken_passes.succeeded()
                    for file, when in summary.retries:
                        self._hand_over_at(when, [file], job_id=f"retry:{file.name}")
                    if summary.files or summary.source_error:
                        log.info("%s import pass: %s", self.imports.service, summary)
                    self._send_alerts_soon()
                except Exception as error:  # noqa: BLE001 — a pass may fail; the thread must not
                    db.session.rollback()
                    log.error("import pass failed: %s", describe_exception(error))
                    if is_transient(error):
                        delay = self.broken_passes.failed()
                        self._hand_over_at(now_utc() + timedelta(seconds=delay), item, job_id="retry-pass")

    def _hand_over_at(self, when: datetime, item: Any, *, job_id: str) -> None:
        """Give the worker `item` (files, or a full pass) again at `when`, if this process still leads."""
        if self.scheduler is not None and not self.stopping.is_set():
            self.scheduler.add_job(self._hand_over, "date", run_date=when, args=[item], id=job_id,
                                   replace_existing=True)

    def _hand_over(self, item: Any) -> None:
        if item == FULL_PASS:
            self.request_full_pass()
        elif self._still_leader():
            self.work.put(item)

    def _still_leader(self) -> bool:
        return self.is_leader and not self.stopping.is_set()


def _engine(app: Flask) -> Any:
    with app.app_context():
        return db.engine
