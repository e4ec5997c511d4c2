"""Operational endpoints of both services (SPEC §6.4), without a token: `GET /health`,
`GET /ready` and `GET /metrics`, and the request metrics behind `/metrics`.

- `/health` (liveness) answers 503 only when a background component started in this process has
  died (the process should be restarted), naming it.
- `/ready` answers 503 only when the database does not answer `SELECT 1` within
  READY_DB_TIMEOUT_SECONDS (a connection of its own, outside the pool, so a busy pool does not hide
  a healthy database or the reverse). Each background component's state is in the body under its
  name, its problems (a dead importer, an unreachable source) as `warnings`: the REST API keeps
  serving while a bucket is down.
"""
from __future__ import annotations

import time
from typing import Any, Required, TypedDict

from flask import Flask, Response, current_app, g, jsonify, request
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from shared import metrics
from shared.background import Problem, components

READY_DB_TIMEOUT_SECONDS = 2
UNMATCHED_ROUTE = "<unmatched>"  # 404s: the raw path would give every probe its own series


def init_request_metrics(app: Flask) -> None:
    """Count and time every request by route and status. Register before any other
    `before_request`, so requests that those answer early (401, 413) are timed too."""

    @app.before_request
    def start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.get("request_started")
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        metrics.observe_request(app.config["SERVICE_NAME"], request.method, route, response.status_code,
                                None if started is None else time.perf_counter() - started)
        return response


def register_operations(app: Flask) -> None:
    app.add_url_rule("/health", "health", health)
    app.add_url_rule("/ready", "ready", ready)
    app.add_url_rule("/metrics", "metrics", metrics_view)


def health() -> tuple[Response, int]:
    failures = [death._asdict() for component in components(current_app)
                if (death := component.death()) is not None]
    body = {"status": "unhealthy" if failures else "ok", "service": current_app.config["SERVICE_NAME"],
            "failures": failures}
    return jsonify(body), 503 if failures else 200


def ready() -> tuple[Response, int]:
    database = _check_database()
    failures = [] if database["ok"] else [
        Problem("database", f"database unreachable ({database['error']})")._asdict()]
    warnings: list[dict[str, str]] = []
    states: dict[str, Any] = {}
    for component in components(current_app):
        report = component.report(database_ok=database["ok"])
        states[component.name] = report.state
        warnings.extend(warning._asdict() for warning in report.warnings)
    body = {"status": "not ready" if failures else "ready", "service": current_app.config["SERVICE_NAME"],
            "failures": failures, "warnings": warnings, "database": database, **states}
    return jsonify(body), 503 if failures else 200


def metrics_view() -> Response:
    imports = current_app.extensions.get("imports")
    payload = metrics.exposition(current_app.config["SERVICE_NAME"], imports)
    return Response(payload, mimetype="text/plain", content_type="text/plain; version=0.0.4; charset=utf-8")


# ---- the checks ---------------------------------------------------------------------------------

def _ready_engine() -> Engine:
    """An engine without a pool, made once per app: each check opens and closes one connection,
    which also means nothing crosses a gunicorn fork."""
    engine = current_app.extensions.get("ready_engine")
    if engine is None:
        timeout_ms = READY_DB_TIMEOUT_SECONDS * 1000
        engine = create_engine(
            current_app.config["SQLALCHEMY_DATABASE_URI"], poolclass=NullPool, hide_parameters=True,
            connect_args={"connect_timeout": READY_DB_TIMEOUT_SECONDS,
                          "application_name": f"{current_app.config['SERVICE_NAME']}-ready",
                          "options": f"-c statement_timeout={timeout_ms}"})
        current_app.extensions["ready_engine"] = engine
    return engine


class DatabaseCheck(TypedDict, total=False):
    """`/ready`'s `database`: whether a connection answered, and in how long or why not."""

    ok: Required[bool]
    seconds: float
    error: str  # the exception's class, never its message


def _check_database() -> DatabaseCheck:
    started = time.perf_counter()
    try:
        with _ready_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 — whatever it is, the database is not usable
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True, "seconds": round(time.perf_counter() - started, 4)}
