"""The event relay (SPEC §9.3): one per service at a time, it publishes the outbox to Kafka.

One thread per process. It stands by until it leads (shared/background/leading.py: the service's
relay lock, the importer's advisory-lock machinery under its own name), then loops: read the oldest
unpublished events (by outbox id, so one record's events go in the order they were recorded),
produce them with an idempotent producer (`acks=all`, key = record id), wait for every delivery
report, and mark the delivered ones published. An id cursor is never kept: ids commit out of order.

While the broker is down nothing is marked, so nothing is lost: the relay backs off, raises one
alert per outage and one on recovery (shared/background/outage.py), and `/ready` shows the outage
(never a 503). Published events (without a broker: all events) older than `EVENTS_RETENTION_HOURS`
are deleted in batches.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from flask import Flask
from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from shared import metrics
from shared.background import ComponentReport, Problem, read_state, register_component
from shared.background.leading import Lead, Leadership
from shared.background.outage import Backoff, OutageLatch, stepped
from shared.config import Settings
from shared.db import unit_of_work
from shared.events.cli import events_cli
from shared.events.cloudevents import CONTENT_TYPE, topic_for
from shared.events.outbox import EventModels, event_models
from shared.extensions import db
from shared.imports.alerts import AlertSender
from shared.logs import describe_exception
from shared.schemas import now_utc

log = logging.getLogger(__name__)

BATCH_SIZE = 500
IDLE_POLL_SECONDS = 0.1  # an idle relay looks for new events this often: the commit-to-broker latency floor
LOCK_RETRY_SECONDS = 1.0  # a standby tries the lock this often, so it takes over within about a second
HEARTBEAT_SECONDS = 5.0
RETENTION_EVERY_SECONDS = 600.0
RETENTION_BATCH = 5000
BACKOFF_SECONDS = (1, 2, 5, 10, 30)
DELIVERY_TIMEOUT_SECONDS = 10.0  # librdkafka's message.timeout.ms: how long a broker outage takes to notice


class _OncePerMinute(logging.Filter):
    """librdkafka logs every reconnect attempt (several a second while a broker is down): pass one
    line per kind (`FAIL`, `ERROR` …) a minute. The relay's own warnings say what happened."""

    def __init__(self, seconds: float = 60.0):
        super().__init__()
        self.seconds = seconds
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.getMessage().split(" ", 1)[0]
        now = time.monotonic()
        if now - self.last.get(kind, -self.seconds) < self.seconds:
            return False
        self.last[kind] = now
        return True


KAFKA_LOG = logging.getLogger("shared.events.kafka")
KAFKA_LOG.addFilter(_OncePerMinute())


class KafkaPublisher:
    """Produce a batch and wait for its delivery reports. A batch that fails drops the producer:
    the next attempt starts a fresh one (a broker that came back empty knows no producer ids)."""

    def __init__(self, bootstrap: str, topic_prefix: str, *, client_id: str):
        self.config = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,  # implies acks=all, in-order retries without duplicates
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(DELIVERY_TIMEOUT_SECONDS * 1000),
            "reconnect.backoff.max.ms": 1000,
            "logger": KAFKA_LOG,
        }
        self.topic_prefix = topic_prefix
        self._producer: Any = None

    def publish(self, events: Sequence[Any]) -> tuple[int, str | None]:
        """Send `events` (outbox rows, in order). Returns how many from the start were delivered,
        and the error kind that stopped the rest (None when all were)."""
        from confluent_kafka import KafkaException, Producer

        reports: dict[int, str | None] = {}

        def delivered(position: int) -> Callable[[Any, Any], None]:
            def report(error: Any, _message: Any) -> None:
                reports[position] = None if error is None else (error.name() or str(error.code()))
            return report

        try:
            if self._producer is None:
                self._producer = Producer(self.config)
            for position, event in enumerate(events):
                self._produce(topic_for(self.topic_prefix, event.aggregate), event.record_id.encode(),
                              event.document.encode(), delivered(position))
            self._producer.flush(DELIVERY_TIMEOUT_SECONDS + 5)
        except (KafkaException, BufferError) as error:
            self.close()
            return self._prefix(reports, len(events)), type(error).__name__
        count = self._prefix(reports, len(events))
        if count < len(events):
            self.close()
            return count, reports.get(count) or "no delivery report"
        return count, None

    def _produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery,
                                       headers=[("content-type", CONTENT_TYPE.encode())])
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)

    @staticmethod
    def _prefix(reports: dict[int, str | None], total: int) -> int:
        """Delivered events before the first one that was not: only those may be marked, or a
        record's earlier event would be sent again after its later one."""
        for position in range(total):
            if position not in reports or reports[position] is not None:
                return position
        return total

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.purge()
                producer.flush(0)
            except Exception:  # noqa: BLE001 — a producer being dropped
                pass


class EventRelay:
    """The app's background component "relay" (shared/background)."""

    name = "relay"

    def __init__(self, app: Flask):
        self.app = app
        self.settings: Settings = app.extensions["settings"]
        self.service: str = app.config["SERVICE_NAME"]
        self.models: EventModels = event_models(self.service)
        self.alert_model = app.extensions["imports"].models.alert
        self.alert_sender = AlertSender(self.settings, self.alert_model)
        self.publisher = (KafkaPublisher(self.settings.EVENTS_KAFKA_BOOTSTRAP, self.settings.EVENTS_TOPIC_PREFIX,
                                         client_id=f"{self.service}-relay")
                          if self.settings.EVENTS_KAFKA_BOOTSTRAP else None)
        with app.app_context():
            engine = db.engine
        self.leadership = Leadership(engine, f"{self.service}:event-relay", role="event relay", service=self.service,
                                     heartbeat_seconds=HEARTBEAT_SECONDS, note_holder=self._note_holder)
        self.outage = OutageLatch(self.alert_model, lambda: self._state(for_update=True), "broker_down_since",
                                  ("relay:broker-down", "relay:broker-up"), self._alert, error_column="last_error")
        self.backoff = Backoff(stepped(BACKOFF_SECONDS))
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.last_retention = 0.0

    @property
    def configured(self) -> bool:
        return self.publisher is not None

    @property
    def is_leader(self) -> bool:
        return self.leadership.held

    # ---- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if not self.configured:
            log.warning("EVENTS_KAFKA_BOOTSTRAP is unset: no relay; %s events stay in the outbox until "
                        "EVENTS_RETENTION_HOURS removes them", self.service)
        self.stopping.clear()
        self.thread = threading.Thread(target=self._loop, name=f"event-relay-{self.service}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop after the current batch and release the lock, so a standby takes over at once."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=DELIVERY_TIMEOUT_SECONDS + 10)
            self.thread = None
        if self.publisher is not None:
            self.publisher.close()
        self.leadership.release()
        metrics.observe_relay(self.service, leader=False)

    # ---- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if not self._lead():
                self.stopping.wait(LOCK_RETRY_SECONDS)
            elif not self._round():
                self.stopping.wait(IDLE_POLL_SECONDS)

    def _lead(self) -> bool:
        lead = self.leadership.lead()
        if lead is Lead.TAKEN:
            self.last_retention = 0.0  # what the previous holder left is looked at now
            self.outage.forget()  # an outage the previous holder alerted ends with one alert, from here
        metrics.observe_relay(self.service, leader=lead.leading)
        return lead.leading

    def _round(self) -> bool:
        """`step()` in an app context; an error is logged and waited out (the database may be back soon)."""
        with self.app.app_context():
            try:
                return self.step()
            except Exception as error:  # noqa: BLE001 — the loop must go on
                db.session.rollback()
                log.warning("event relay: %s", describe_exception(error))
                self.stopping.wait(LOCK_RETRY_SECONDS)
                return False
            finally:
                db.session.remove()

    def step(self) -> bool:
        """One round, inside an app context: heartbeat, retention when due, one batch published.
        True when there may be more to publish at once."""
        clock = time.monotonic()
        self.leadership.beat()
        if clock - self.last_retention >= RETENTION_EVERY_SECONDS:
            self.remove_expired()
            self.last_retention = clock
        if self.publisher is None or not self.backoff.due(clock):
            return False
        return self.publish_batch() == BATCH_SIZE

    def publish_batch(self, limit: int | None = None) -> int:
        """Publish the oldest unpublished events; returns how many were marked published."""
        Outbox = self.models.outbox
        events = db.session.execute(
            select(Outbox.id, Outbox.aggregate, Outbox.record_id, Outbox.document)
            .where(Outbox.published_at.is_(None)).order_by(Outbox.id).limit(limit or BATCH_SIZE)).all()
        db.session.rollback()  # no transaction stays open while the broker is waited for
        if not events:
            return 0
        assert self.publisher is not None  # step() publishes only with a broker configured
        delivered, error = self.publisher.publish(events)
        if delivered:
            with unit_of_work():
                db.session.execute(update(Outbox).where(Outbox.id.in_([e.id for e in events[:delivered]]))
                                   .values(published_at=func.now()))
                db.session.execute(update(self.models.state).where(self.models.state.id == 1)
                                   .values(last_published_at=func.now()))
            metrics.observe_events_published(self.service, delivered)
        if error is None:
            self._broker_up()
        else:
            self._broker_down(error)
        return delivered

    def remove_expired(self) -> int:
        """Delete published events (without a relay: recorded ones) older than the retention, in batches."""
        Outbox = self.models.outbox
        cutoff = now_utc() - timedelta(hours=self.settings.EVENTS_RETENTION_HOURS)
        expired = Outbox.published_at < cutoff if self.configured else Outbox.created_at < cutoff
        removed = 0
        while not self.stopping.is_set():
            with unit_of_work():
                batch = select(Outbox.id).where(expired).order_by(Outbox.id).limit(RETENTION_BATCH)
                result = db.session.execute(delete(Outbox).where(Outbox.id.in_(batch.scalar_subquery())))
                count = cast("CursorResult[Any]", result).rowcount
            removed += count
            if count < RETENTION_BATCH:
                break
        if removed:
            log.info("event outbox: %s events past retention removed", removed)
        return removed

    # ---- outage and recovery ---------------------------------------------------------------------

    def _broker_down(self, error_kind: str) -> None:
        delay = self.backoff.failed()
        log.warning("event relay: broker unavailable (%s); next attempt in %ss", error_kind, delay)
        self.outage.down(error_kind)
        self._send_alerts()

    def _broker_up(self) -> None:
        self.backoff.succeeded()
        if self.outage.up() is not None:
            log.info("event relay: broker reachable again")
            self._send_alerts()

    def _alert(self, down: bool, since: datetime, error_kind: str | None) -> tuple[str, str]:
        state = "unreachable" if down else "reachable again"
        lines = [f"Service: {self.service}", f"Kafka bootstrap: {self.settings.EVENTS_KAFKA_BOOTSTRAP}",
                 f"Unreachable since: {since.isoformat(timespec='seconds')}"]
        if error_kind:
            lines.append(f"Error: {error_kind}")
        lines.append("Events wait in the outbox and none is lost; the relay publishes them once the broker "
                     "answers. See the relay runbook in docs/operations.md.")
        return f"[{self.service}] event broker {state}", "\n".join(lines) + "\n"

    def _send_alerts(self) -> None:
        try:
            sent = self.alert_sender.send_pending()
            metrics.observe_alerts_sent(self.service, sent)
        except Exception as error:  # noqa: BLE001 — mail never stops the relay; the importer retries too
            db.session.rollback()
            log.warning("event relay: alerts not sent (%s)", describe_exception(error))

    # ---- state for every worker ------------------------------------------------------------------

    def _state(self, *, for_update: bool = False) -> Any:
        State = self.models.state
        db.session.execute(insert(State).values(id=1).on_conflict_do_nothing(index_elements=["id"]))
        query: Any = select(State).where(State.id == 1)
        return db.session.scalars(query.with_for_update() if for_update else query).one()

    def _note_holder(self, identity: str, now: datetime) -> None:
        state = self._state(for_update=True)
        state.holder = identity
        state.heartbeat_at = now

    def death(self) -> Problem | None:
        """Started in this process, and its thread is gone: the process should be restarted."""
        if self.thread is not None and not self.thread.is_alive() and not self.stopping.is_set():
            return Problem("relay", "event relay thread dead")
        return None

    def report(self, *, database_ok: bool) -> ComponentReport:
        state: dict[str, Any] = {"configured": self.configured, "started": self.thread is not None,
                                 "leader": self.is_leader}
        warnings: list[Problem] = []
        if (death := self.death()) is not None:
            warnings.append(death)
        if not database_ok:
            return ComponentReport(state, warnings)
        Outbox, State = self.models.outbox, self.models.state
        rows, error = read_state(
            select(State.holder, State.heartbeat_at, State.broker_down_since, State.last_error,
                   State.last_published_at).where(State.id == 1),
            select(func.count().label("pending"), func.min(Outbox.created_at).label("oldest_pending_at"))
            .where(Outbox.published_at.is_(None)))
        if error is not None:  # the database check says why
            state["state_error"] = error
            return ComponentReport(state, warnings)
        for row in rows:
            state.update(row or {})
        if self.configured and state.get("broker_down_since"):
            warnings.append(Problem("broker", f"event broker unreachable since {state['broker_down_since']}; "
                                              f"{state['pending']} events wait in the outbox"))
        return ComponentReport(state, warnings)


def install(app: Flask) -> EventRelay:
    """Hang the relay on the app (`app.extensions["relay"]`), for `/health`, `/ready` and the CLI."""
    relay = EventRelay(app)
    app.extensions["relay"] = relay
    register_component(app, relay)
    app.cli.add_command(events_cli)
    return relay
