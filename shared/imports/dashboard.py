"""What the import dashboard shows, as plain queries: a page of imports, one import, imports per
day by status, the importer's state; and its two actions. Nothing here knows about HTTP.

Records are shown by their `label`, never their `name`: a patient file's name holds the
patient's name, the label names the registration token instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, cast, func, select, true
from sqlalchemy.orm import defer

from shared.db import page_count, page_of
from shared.extensions import db
from shared.imports.models import FAILED, PENDING, PROCESSING, QUARANTINED, STATUSES, ImportRecordMixin
from shared.imports.types import WatchedSource

RETRYABLE = (FAILED, QUARANTINED)


@dataclass(frozen=True)
class ImportRow:
    """One line of the list: everything but the per-item errors themselves."""

    id: int
    label: str
    source: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    error_count: int
    warning_count: int
    error_kinds: list[tuple[str, int]]  # (kind, how many), most frequent first

    @property
    def duration(self) -> timedelta | None:
        return duration(self.status, self.started_at, self.finished_at)

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE


@dataclass(frozen=True)
class Page:
    """One page of a longer list (imports, or one import's errors)."""

    rows: list[Any]
    total: int
    page: int
    page_size: int

    @property
    def total_pages(self) -> int:
        return page_count(self.total, self.page_size)


@dataclass(frozen=True)
class DayCounts:
    day: date
    by_status: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class ImporterStatus:
    """The shared state (from the database) and what this process knows of its own importer."""

    configured: bool
    source_kind: str | None
    source_description: str | None
    poll_seconds: float
    # importer_state: the same for every worker and replica
    lock_holder: str | None = None
    lock_heartbeat_at: datetime | None = None
    last_pass_started_at: datetime | None = None
    last_pass_finished_at: datetime | None = None
    last_success_at: datetime | None = None
    source_down_since: datetime | None = None
    run_requested_at: datetime | None = None
    # this process
    process_identity: str | None = None
    worker_running: bool = False
    holds_lock: bool = False
    last_pass_at: datetime | None = None
    next_poll_at: datetime | None = None
    observer_alive: bool | None = None  # None: not a folder source, or not watched here
    files_waiting: int | None = None
    status_totals: dict[str, int] = field(default_factory=dict)


def duration(status: str, started_at: datetime | None, finished_at: datetime | None) -> timedelta | None:
    """How long the last attempt took; None while one is waiting or running (a retried import
    keeps the times of the attempt before)."""
    if status in (PENDING, PROCESSING) or started_at is None or finished_at is None or finished_at < started_at:
        return None
    return finished_at - started_at


def recent_imports(record_model: type[ImportRecordMixin], *, status: str | None = None, page: int = 1,
                   page_size: int = 25) -> Page:
    """Imports newest first, optionally of one status; one page with the kinds of their errors."""
    Record = record_model
    ids, total = page_of(select(Record.id).where(*([Record.status == status] if status else [])),
                         order_by=Record.id.desc(), page=page, page_size=page_size)
    rows = db.session.execute(
        select(Record.id, Record.label, Record.source, Record.status, Record.attempts,
               Record.next_attempt_at, Record.created_at, Record.started_at, Record.finished_at,
               Record.counts,
               func.jsonb_array_length(Record.errors).label("error_count"),
               func.jsonb_array_length(Record.warnings).label("warning_count"))
        .where(Record.id.in_(ids)).order_by(Record.id.desc())).all()
    kinds = error_kinds(Record, ids)
    return Page(rows=[ImportRow(**row._asdict(), error_kinds=kinds.get(row.id, [])) for row in rows],
                total=total, page=page, page_size=page_size)


def error_kinds(record_model: type[ImportRecordMixin], ids: list[int]) -> dict[int, list[tuple[str, int]]]:
    """{import id: [(error kind, count), ...]}, counted in the database: an import of a big file
    can carry thousands of errors, and the list needs only their kinds."""
    if not ids:
        return {}
    Record = record_model
    element = func.jsonb_array_elements(Record.errors).table_valued("value").lateral("error")
    kind = func.coalesce(element.c.value.op("->>")("kind"), "error")
    found: dict[int, list[tuple[str, int]]] = {}
    for import_id, error_kind, count in db.session.execute(
            select(Record.id, kind, func.count()).select_from(Record).join(element, true())
            .where(Record.id.in_(ids)).group_by(Record.id, kind)
            .order_by(Record.id, func.count().desc(), kind)):
        found.setdefault(import_id, []).append((error_kind, count))
    return found


def get_import(record_model: type[ImportRecordMixin], import_id: int) -> ImportRecordMixin | None:
    """One import without its errors, which can be thousands: `import_errors` pages them."""
    return db.session.get(record_model, import_id, options=[defer(record_model.errors)])


def import_errors(record_model: type[ImportRecordMixin], import_id: int, *, page: int = 1,
                  page_size: int = 100) -> Page:
    """One page of one import's errors, in the order they were recorded, sliced in the database."""
    Record = record_model
    error = func.jsonb_array_elements(Record.errors).table_valued("value", with_ordinality="position") \
        .render_derived(name="error").lateral()
    query = select(error.c.value).select_from(Record).join(error, true()).where(Record.id == import_id)
    errors, total = page_of(query, order_by=error.c.position, page=page, page_size=page_size)
    return Page(rows=errors, total=total, page=page, page_size=page_size)


def imports_per_day(record_model: type[ImportRecordMixin], *, days: int = 14, today: date | None = None) -> list[DayCounts]:
    """How many imports were created on each of the last `days` UTC days, by status; every day
    present, oldest first. One GROUP BY."""
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    Record = record_model
    day = cast(func.timezone("UTC", Record.created_at), Date)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    counts: dict[date, dict[str, int]] = {first + timedelta(days=n): {} for n in range(days)}
    for when, status, count in db.session.execute(
            select(day, Record.status, func.count())
            .where(Record.created_at >= start, Record.created_at < end)
            .group_by(day, Record.status)):
        counts[when][status] = count
    return [DayCounts(day=when, by_status=by_status) for when, by_status in counts.items()]


def status_totals(record_model: type[ImportRecordMixin]) -> dict[str, int]:
    Record = record_model
    found = dict(db.session.execute(select(Record.status, func.count()).group_by(Record.status)).all())
    return {status: found.get(status, 0) for status in STATUSES}


def importer_status(imports: Any) -> ImporterStatus:
    """`imports` is the app's ImportsExtension."""
    source, worker = imports.source, imports.worker
    state = db.session.get(imports.models.state, 1)  # read only: no row yet means no pass yet
    shared_state = {name: getattr(state, name, None) for name in (
        "lock_holder", "lock_heartbeat_at", "last_pass_started_at", "last_pass_finished_at",
        "last_success_at", "source_down_since", "run_requested_at")}
    running = worker is not None and worker.alive()
    observer = None
    watched = isinstance(source, WatchedSource)
    if watched and worker is not None and worker.is_leader:
        observer = source.observer_alive()
    return ImporterStatus(
        configured=imports.configured,
        source_kind=source.kind if source is not None else None,
        source_description=source.description if source is not None else None,
        poll_seconds=imports.poll_seconds,
        **shared_state,
        process_identity=worker.identity if worker is not None else None,
        worker_running=running,
        holds_lock=worker is not None and worker.is_leader,
        last_pass_at=worker.last_pass_at if worker is not None else None,
        next_poll_at=worker.next_poll_at() if running else None,
        observer_alive=observer,
        files_waiting=source.waiting() if watched else None,
        status_totals=status_totals(imports.models.record),
    )
