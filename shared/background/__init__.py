"""The background components a process runs beside its requests (the importer, the event relay):
one registry per app, read by `/health` and `/ready` (SPEC §6.4), and their one life cycle.

Life cycle, the only place it is decided:
1. `create_app()` registers each component (`register_component`) and, when
   `shared.runtime.should_start_importer` says this process may run them (IMPORTS_ENABLED, and
   not a Flask maintenance command or the debug reloader's watcher), calls `start_background`.
2. Under gunicorn with `--preload` the master made the app: its `when_ready` hook calls
   `stop_background` (the master never imports) and each worker's `post_fork` hook starts again
   what was stopped (`start_background`). Without `--preload` each worker runs step 1 itself.
3. On the way out (`worker_exit`, `on_exit`, or the interpreter's exit) `stop_background` stops
   them: the current file or batch finishes and the advisory locks are released at once.
Whatever runs where, the database locks guarantee one active importer and one relay per service.
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from flask import Flask

from shared.extensions import db
from shared.logs import describe_exception


class Problem(NamedTuple):
    """One finding of a check, as `/health` and `/ready` show it: which check, and what is wrong."""

    check: str
    detail: str


@dataclass
class ComponentReport:
    state: dict[str, Any]  # shown in `/ready` under the component's name
    warnings: list[Problem] = field(default_factory=list)  # problems on-call should see; never a 503


class BackgroundComponent(Protocol):
    """What `/health` and `/ready` ask of a background component."""

    name: str  # "importer", "relay": its key in the `/ready` body

    def death(self) -> Problem | None:
        """What has died, when the component was started in this process and no longer runs
        (the process should be restarted); None otherwise, also when it was never started here."""

    def report(self, *, database_ok: bool) -> ComponentReport:
        """Its state and warnings; `database_ok` says whether it may read its state from the database."""

    def start(self) -> None:
        """Start its threads in this process (a component with nothing configured logs why and stays off)."""

    def stop(self) -> None:
        """Stop cleanly: finish the current unit of work, release its lock."""


def register_component(app: Flask, component: BackgroundComponent) -> None:
    """Add a component to the app's registry; `/health` and `/ready` pick it up from there."""
    app.extensions.setdefault("background_components", {})[component.name] = component


def components(app: Flask) -> list[BackgroundComponent]:
    return list(app.extensions.get("background_components", {}).values())


def start_background(app: Flask) -> None:
    """Start every registered component in this process; `stop_background` stops them again."""
    started = app.extensions.setdefault("background_started", [])
    for component in components(app):
        if component not in started:
            component.start()
            started.append(component)
    if not app.extensions.get("background_stop_at_exit"):
        atexit.register(stop_background, app)
        app.extensions["background_stop_at_exit"] = True


def stop_background(app: Flask) -> list[BackgroundComponent]:
    """Stop what `start_background` started here; returns those components (so a forked worker can
    start them again). Stopping twice does nothing."""
    started = app.extensions.get("background_started", [])
    app.extensions["background_started"] = []
    for component in started:
        component.stop()
    return started


def read_state(*queries: Any) -> tuple[list[dict[str, Any] | None], str | None]:
    """For a component's report: the first row of each read-only query as a dict (times in
    ISO 8601; None for no row), or no rows and the database error described. Never raises:
    `/ready`'s database check says why the database failed."""
    try:
        rows = [db.session.execute(query).first() for query in queries]
    except Exception as error:  # noqa: BLE001 — reported, not raised
        return [], describe_exception(error)
    finally:
        db.session.rollback()
    return [None if row is None else {key: value.isoformat() if hasattr(value, "isoformat") else value
                                      for key, value in row._asdict().items()} for row in rows], None
