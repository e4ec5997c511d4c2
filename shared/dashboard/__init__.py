"""The import dashboard at `/imports`: server-rendered pages for on-call, behind the service's
credentials (a pasted token, or signing in at the identity provider; SPEC §11).

Plain Jinja templates, one local stylesheet, charts drawn as inline SVG on the server: no build
step, no script, nothing fetched from the internet. Mounted by `shared.app_factory.build_app`
for both services; it reads through `shared.imports` (the queries in `shared.imports.dashboard`),
which knows nothing of it.
"""
from __future__ import annotations

import logging

from flask import Flask

log = logging.getLogger(__name__)


def init_dashboard(app: Flask) -> None:
    from shared.dashboard import provider, session
    from shared.dashboard.views import bp

    key = app.extensions["settings"].DASHBOARD_SECRET_KEY
    if key:
        session.configure(app, key, app.config["SERVICE_NAME"])
        provider.configure(app)
    else:
        log.warning("DASHBOARD_SECRET_KEY is not set: the import dashboard (/imports) is off")
    app.register_blueprint(bp)
