"""Bearer-token authentication for `/api/` (SPEC §5). The token's configured name becomes the
actor of every write made through the request."""
from __future__ import annotations

import hmac

from flask import Flask, current_app, g, request
from flask_smorest import abort

PUBLIC_API_PATHS = ("/api/docs", "/api/openapi.json")


def token_name(presented: str, tokens: dict[str, str]) -> str | None:
    # Compare against every configured token, always, so timing does not reveal which matched.
    found = None
    for token, name in tokens.items():
        if hmac.compare_digest(presented.encode(), token.encode()):
            found = name
    return found


def authenticate() -> None:
    if not request.path.startswith("/api/") or request.path.startswith(PUBLIC_API_PATHS):
        return
    if request.method == "OPTIONS":
        return  # CORS preflight carries no credentials
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        abort(401, message="send Authorization: Bearer <token>")
    name = token_name(presented.strip(), current_app.extensions["settings"].API_TOKENS)
    if name is None:
        abort(401, message="the bearer token is not valid")
    g.actor = name


def init_auth(app: Flask) -> None:
    app.before_request(authenticate)
