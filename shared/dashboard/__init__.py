"""The import dashboard at `/imports`: server-rendered pages for on-call, behind the API tokens.

Plain Jinja templates, one local stylesheet, charts drawn as inline SVG on the server: no build
step, no script, nothing fetched from the internet. Mounted by `shared.app_factory.build_app`
for both services; it reads through `shared.imports` (the queries in `shared.imports.dashboard`),
which knows nothing of it.
"""
from __future__ import annotations

from flask import Flask


def init_dashboard(app: Flask) -> None:
    from shared.dashboard import session
    from shared.dashboard.views import bp

    session.configure(app, app.extensions["settings"].API_TOKENS, app.config["SERVICE_NAME"])
    app.register_blueprint(bp)
