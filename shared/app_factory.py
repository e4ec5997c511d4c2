"""What every service's `create_app()` does, in one place; each service passes what is its own."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request, send_from_directory
from flask_cors import CORS
from flask_migrate import Migrate

from shared import metrics
from shared.auth import check_route_scopes, init_auth
from shared.background import start_background
from shared.batch import BatchAdapter, batches_blp
from shared.config import Settings
from shared.dashboard import init_dashboard
from shared.db import ENGINE_OPTIONS, ping_idle_connections
from shared.errors import register_error_handlers
from shared.events import relay as events_relay
from shared.extensions import db
from shared.http import Api, Blueprint, JSONProvider, SecurityPlugin, require_json_body
from shared.imports import api as imports_api
from shared.imports import service as imports
from shared.imports.service import ImporterSpec
from shared.logs import configure_logging
from shared.ops import init_request_metrics, register_operations
from shared.runtime import should_start_importer

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "migrations"
SWAGGER_ASSETS_URL = "/api/docs/assets/"
CONNECT_TIMEOUT_SECONDS = 10  # libpq waits for ever by default; a request should fail instead


@dataclass
class ServiceDefinition:
    """What makes a service itself: its name, schema, blueprints, importer and batch adapter.
    What every service has besides — `/api/imports`, `/api/batches`, the dashboard — is added here."""

    name: str  # "patient_service": also its PostgreSQL schema and its migrations folder
    title: str
    blueprints: Iterable[Blueprint]
    importer: ImporterSpec
    batch: BatchAdapter
    no_store_prefixes: tuple[str, ...] = ()
    description: str = ""


class App(Flask):
    """Flask, remembering which of its hooks and views are coroutine functions: Flask asks
    `inspect` again for each of them on every request (twenty times an appointment write, a
    fiftieth of its time, bench/api_write.py). Only functions registered with the app reach this."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._is_sync: dict[Callable[..., Any], bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        is_sync = self._is_sync.get(func)
        if is_sync is None:
            is_sync = self._is_sync[func] = not iscoroutinefunction(func)
        return func if is_sync else self.async_to_sync(func)


def build_app(service: ServiceDefinition, settings: Settings) -> Flask:
    app = App(service.name)
    app.json = JSONProvider(app)
    app.extensions["settings"] = settings
    app.config.update(_flask_config(service, settings))
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT, service.name)

    db.init_app(app)
    with app.app_context():
        for engine in db.engines.values():
            ping_idle_connections(engine)
    # A Migrate of its own: flask_migrate's commands read the folder from the Migrate object, so a
    # shared one would run every app in a process with the last-created service's migrations.
    Migrate(app, db, directory=str(MIGRATIONS_ROOT / service.name),
            version_table_schema=service.name, include_schemas=True)
    api = Api(app, spec_kwargs={"extra_plugins": [SecurityPlugin(oidc=bool(settings.OIDC_ISSUER))]})
    app.extensions["api"] = api
    register_error_handlers(app)  # after Api(): ours replace flask-smorest's error format
    init_request_metrics(app)  # first: times requests that later hooks answer early
    app.before_request(_assign_request_id)
    init_auth(app)
    app.before_request(require_json_body)
    if settings.CORS_ORIGINS:
        CORS(app, resources={r"/api/*": {"origins": settings.CORS_ORIGINS}},
             expose_headers=["ETag", "X-Pagination", "Location", "Idempotent-Replayed"])
    if service.no_store_prefixes:
        _add_no_store(app, service.no_store_prefixes)
    _add_operational_routes(app)
    register_operations(app)  # /health, /ready and /metrics
    for blueprint in (*service.blueprints, imports_api.blp, batches_blp):
        api.register_blueprint(blueprint)
    app.extensions["batch"] = service.batch
    imports.install(app, service.importer)
    init_dashboard(app)  # /imports: the pages on-call reads, over the imports extension
    events_relay.install(app)
    metrics.declare_series(service.name)
    metrics.declare_event_series(service.name)
    check_route_scopes(app)  # every /api/ route declares its scope, or the app is not built
    _start_background_where_allowed(app, settings)
    return app


def _start_background_where_allowed(app: Flask, settings: Settings) -> None:
    """The importer and the event relay run where the importer may: a maintenance command or a test
    app publishes nothing. Their whole life cycle: shared/background/__init__.py."""
    start, reason = should_start_importer(settings.IMPORTS_ENABLED)
    if start:
        start_background(app)
    else:
        log.info("background importer and event relay not started: %s", reason)


def _flask_config(service: ServiceDefinition, settings: Settings) -> dict[str, Any]:
    """Flask's, Flask-SQLAlchemy's and flask-smorest's settings for a service."""
    return dict(
        SERVICE_NAME=service.name,
        DB_SCHEMA=service.name,
        SQLALCHEMY_DATABASE_URI=settings.DATABASE_URL,
        SQLALCHEMY_ENGINE_OPTIONS={**ENGINE_OPTIONS,
                                   "connect_args": {"application_name": service.name,
                                                    "connect_timeout": CONNECT_TIMEOUT_SECONDS}},
        MAX_CONTENT_LENGTH=settings.MAX_REQUEST_BYTES,
        API_TITLE=service.title,
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_ASSETS_URL,
        API_SPEC_OPTIONS={
            "info": {"description": service.description},
            "security": [{"bearer": []}],
            "components": {"securitySchemes": security_schemes(settings)},
        },
    )


def security_schemes(settings: Settings) -> dict[str, dict[str, str]]:
    """SPEC §11: `bearer` for every credential; `oidc` too when people sign in with a provider."""
    schemes: dict[str, dict[str, str]] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "A service client's token (AUTH_CLIENTS_FILE), an OpenID Connect access token, or in "
                       "development an API_TOKENS token. `x-required-scopes` names the scope each operation needs."}}
    if settings.OIDC_ISSUER:
        schemes["oidc"] = {"type": "openIdConnect",
                           "openIdConnectUrl": f"{settings.OIDC_ISSUER}/.well-known/openid-configuration"}
    return schemes


def _assign_request_id() -> None:
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied[:64] if supplied.isprintable() and supplied else uuid.uuid4().hex


def _add_no_store(app: Flask, prefixes: tuple[str, ...]) -> None:
    @app.after_request
    def no_store(response: Response) -> Response:
        if request.path.startswith(prefixes):
            response.headers["Cache-Control"] = "no-store"
        return response


def _add_operational_routes(app: Flask) -> None:
    import swagger_ui_bundle

    assets = swagger_ui_bundle.swagger_ui_path

    @app.get(SWAGGER_ASSETS_URL + "<path:filename>")
    def swagger_assets(filename: str) -> Response:
        return send_from_directory(assets, filename, max_age=86400)

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers.setdefault("X-Request-ID", g.request_id)
        return response


