"""Operational endpoints of both services (SPEC §6.4), without a token: `GET /ready` and
`GET /metrics` (`GET /health` lives in app_factory), and the request metrics behind `/metrics`.

`/ready` answers 200 when this process can do its work, else 503 naming each failure:
- the database does not answer `SELECT 1` within READY_DB_TIMEOUT_SECONDS (a connection of its
  own, outside the pool, so a busy pool does not hide a healthy database or the reverse);
- the importer was started in this process but its thread or clock has died;
- the import source has been unreachable since a moment the importer recorded (shared by all
  workers and replicas, in `importer_state.source_down_since`).
"""
from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from shared import metrics
from shared.extensions import db
from shared.logs import describe_exception

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
    app.add_url_rule("/ready", "ready", ready)
    app.add_url_rule("/metrics", "metrics", metrics_view)


def ready() -> tuple[Response, int]:
    service = current_app.config["SERVICE_NAME"]
    failures: list[dict[str, str]] = []
    database = _check_database()
    if not database["ok"]:
        failures.append({"check": "database", "detail": f"database unreachable ({database['error']})"})
    importer = _importer_details(database_ok=database["ok"])
    if importer.get("started") and not importer["alive"]:
        failures.append({"check": "importer", "detail": "importer thread dead"})
    if importer.get("source_down_since"):
        failures.append({"check": "source",
                         "detail": f"source unreachable since {importer['source_down_since']}"})
    body = {"status": "not ready" if failures else "ready", "service": service, "failures": failures,
            "database": database, "importer": importer}
    return jsonify(body), 503 if failures else 200


def metrics_view() -> Response:
    imports = current_app.extensions.get("imports")
    payload = metrics.exposition(current_app.config["SERVICE_NAME"], imports)
    return Response(payload, mimetype="text/plain", content_type="text/plain; version=0.0.4; charset=utf-8")


# ---- the checks ---------------------------------------------------------------------------------

def _ready_engine() -> Any:
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


def _check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with _ready_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 — whatever it is, the database is not usable
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True, "seconds": round(time.perf_counter() - started, 4)}


def _importer_details(*, database_ok: bool) -> dict[str, Any]:
    imports = current_app.extensions.get("imports")
    if imports is None or not imports.configured:
        return {"configured": False}
    worker = imports.worker
    details: dict[str, Any] = {"configured": True, "started": worker is not None}
    if worker is not None:
        next_poll = worker.next_poll_at()
        details.update(alive=worker.alive(), leader=worker.is_leader,
                       next_poll_at=next_poll.isoformat() if next_poll else None)
    if database_ok:
        try:
            State = imports.models.state
            state = db.session.execute(select(State.lock_holder, State.lock_heartbeat_at, State.last_success_at,
                                              State.source_down_since).where(State.id == 1)).first()
            db.session.rollback()
        except Exception as error:  # noqa: BLE001 — reported, not raised: the database check said why
            db.session.rollback()
            details["state_error"] = describe_exception(error)
            return details
        if state is not None:
            details.update({key: value.isoformat() if hasattr(value, "isoformat") else value
                            for key, value in state._asdict().items()})
    return details
