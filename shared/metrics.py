"""Prometheus metrics of both services (SPEC §6.4), named `curavani_*`, each with a `service` label.

Two kinds:
- *process metrics* — requests, latencies, imports, items, import durations, alerts sent, files
  waiting, who holds the importer lock — are counted where they happen. Under gunicorn with
  several workers each worker counts its own; with `PROMETHEUS_MULTIPROC_DIR` set (gunicorn.conf.py
  sets it up) prometheus-client keeps the values in files there and a scrape, answered by any
  worker, adds up every worker's (and drops dead workers' gauges).
- *database metrics* — last successful import, source up, alerts pending, database up, events
  pending and the age of the oldest — are read
  from the service's tables at scrape time, so every worker and every replica gives the same answer.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.extensions import db
from shared.imports.models import COUNT_KEYS, FAILED, PARTIAL, QUARANTINED, SUCCEEDED
from shared.logs import describe_exception

log = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("curavani_http_requests", "HTTP requests answered, by route (the URL rule) and status",
                   ["service", "method", "route", "status"])
REQUEST_SECONDS = Histogram("curavani_http_request_duration_seconds", "Time to answer an HTTP request",
                            ["service", "method", "route"],
                            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
IMPORTS = Counter("curavani_imports", "Import attempts finished, by the status they ended in",
                  ["service", "status"])
IMPORT_ITEMS = Counter("curavani_import_items", "Records handled by finished imports, by action "
                       "(created, updated, unchanged, deleted, ignored_stale, failed)", ["service", "action"])
IMPORT_SECONDS = Histogram("curavani_import_duration_seconds", "Time to import one file", ["service"],
                           buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
ALERTS_SENT = Counter("curavani_alerts_sent", "Alert e-mails delivered (or written to the outbox)", ["service"])
FILES_WAITING = Gauge("curavani_import_files_waiting", "Files noticed in the import folder that wait to "
                      "settle or to be imported (folder importer only)", ["service"],
                      multiprocess_mode="livesum")
LOCK_HELD = Gauge("curavani_importer_lock_held", "1 if this process holds the importer lock and imports; "
                  "in multiprocess mode one series per worker pid", ["service"], multiprocess_mode="liveall")
EVENTS_PUBLISHED = Counter("curavani_events_published", "Domain events the broker acknowledged and the relay "
                           "marked published (a re-send after a crash counts again)", ["service"])
RELAY_LEADER = Gauge("curavani_event_relay_leader", "1 if this process holds the relay lock and publishes; "
                     "in multiprocess mode one series per worker pid", ["service"], multiprocess_mode="liveall")


# ---- what the app and the importer report -----------------------------------------------------

def observe_request(service: str, method: str, route: str, status: int, seconds: float | None) -> None:
    REQUESTS.labels(service, method, route, str(status)).inc()
    if seconds is not None:
        REQUEST_SECONDS.labels(service, method, route).observe(seconds)


def observe_import(service: str, record: Any, seconds: float) -> None:
    """An import attempt finished (the runner's `on_record_finished`)."""
    if record is None:
        return
    IMPORTS.labels(service, record.status).inc()
    for action, count in (record.counts or {}).items():
        if count:
            IMPORT_ITEMS.labels(service, action).inc(count)
    IMPORT_SECONDS.labels(service).observe(seconds)


def observe_alerts_sent(service: str, count: int) -> None:
    if count:
        ALERTS_SENT.labels(service).inc(count)


def observe_importer(service: str, *, leader: bool, files_waiting: int | None) -> None:
    """The importer's state in this process, set on every heartbeat and when it stops."""
    LOCK_HELD.labels(service).set(1 if leader else 0)
    if files_waiting is not None:
        FILES_WAITING.labels(service).set(files_waiting)


def observe_events_published(service: str, count: int) -> None:
    EVENTS_PUBLISHED.labels(service).inc(count)


def observe_relay(service: str, *, leader: bool) -> None:
    RELAY_LEADER.labels(service).set(1 if leader else 0)


def declare_series(service: str) -> None:
    """Every series whose labels are known in advance, at zero from the start: a fresh service lists
    every metric of the runbook's table (docs/operations.md), and `increase()` sees the first import or alert (a series that is
    born at 1 hides it). Request series are labelled by route and status, so they appear with the
    first request of each."""
    ALERTS_SENT.labels(service)
    for status in (SUCCEEDED, PARTIAL, FAILED, QUARANTINED):
        IMPORTS.labels(service, status)
    for action in COUNT_KEYS:
        IMPORT_ITEMS.labels(service, action)
    IMPORT_SECONDS.labels(service)
    FILES_WAITING.labels(service)
    LOCK_HELD.labels(service)


def declare_event_series(service: str) -> None:
    """The relay's series at zero from the start, so a dashboard sees 0 rather than nothing."""
    EVENTS_PUBLISHED.labels(service)
    RELAY_LEADER.labels(service)


# ---- a scrape ---------------------------------------------------------------------------------

def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))


class DatabaseCollector(Collector):
    """Gauges read from the service's import tables when scraped. Call inside an app context."""

    def __init__(self, service: str, imports: Any | None):
        self.service = service
        self.imports = imports  # the app's ImportsExtension, or None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("curavani_database_up", "1 if the database answered this scrape",
                               labels=["service"])
        try:
            families = list(self._import_state()) + list(self._event_state())
            up.add_metric([self.service], 1)
        except Exception as error:  # noqa: BLE001 — a scrape must answer even when the database does not
            db.session.rollback()
            log.warning("metrics: the database did not answer (%s)", describe_exception(error))
            families = []
            up.add_metric([self.service], 0)
        yield up
        yield from families

    def _import_state(self) -> Iterable[Metric]:
        if self.imports is None:
            return []
        models = self.imports.models
        state = db.session.execute(select(models.state.last_success_at, models.state.source_down_since)
                                   .where(models.state.id == 1)).first()
        pending = db.session.scalar(select(func.count()).select_from(models.alert)
                                    .where(models.alert.sent_at.is_(None)))
        db.session.rollback()
        last_success = GaugeMetricFamily(
            "curavani_import_last_success_timestamp_seconds",
            "When an import last succeeded (Unix time; 0 before the first one): alert on silence",
            labels=["service"])
        last_success.add_metric([self.service], state.last_success_at.timestamp()
                                if state is not None and state.last_success_at is not None else 0)
        source_up = GaugeMetricFamily("curavani_import_source_up",
                                      "0 while the import source is unreachable", labels=["service"])
        source_up.add_metric([self.service], 0 if state is not None and state.source_down_since else 1)
        alerts_pending = GaugeMetricFamily("curavani_alerts_pending", "Alerts raised but not sent yet",
                                           labels=["service"])
        alerts_pending.add_metric([self.service], pending or 0)
        return [last_success, source_up, alerts_pending]


    def _event_state(self) -> Iterable[Metric]:
        from shared.events.outbox import event_models  # the models register when a service is loaded

        outbox = event_models(self.service).outbox
        pending, age = db.session.execute(
            select(func.count(), func.coalesce(func.extract("epoch", func.now() - func.min(outbox.created_at)), 0))
            .where(outbox.published_at.is_(None))).one()
        db.session.rollback()
        pending_family = GaugeMetricFamily("curavani_events_pending", "Domain events in the outbox not yet "
                                           "published", labels=["service"])
        pending_family.add_metric([self.service], pending or 0)
        age_family = GaugeMetricFamily("curavani_events_oldest_pending_age_seconds", "Age of the oldest "
                                       "unpublished event (0 when none waits): alert when it grows",
                                       labels=["service"])
        age_family.add_metric([self.service], float(age or 0))
        return [pending_family, age_family]


class _ThisProcess(Collector):
    """The metrics of this process (single-process mode), only the series of `service`: a test
    process can hold apps of both services."""

    def __init__(self, service: str):
        self.service = service

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            # A family whose series are all the other service's is still listed (HELP and TYPE).
            family.samples = [s for s in family.samples if s.labels.get("service", self.service) == self.service]
            yield family


def exposition(service: str, imports: Any | None) -> bytes:
    """The text a scrape gets: this service's process metrics (every worker's, in multiprocess
    mode) and the database gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess(service))
    registry.register(DatabaseCollector(service, imports))
    return generate_latest(registry)
