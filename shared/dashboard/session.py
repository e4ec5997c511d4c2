"""Who is signed in to the dashboard, kept in Flask's signed session cookie, and its CSRF token.

- On-call signs in by pasting an API token. The cookie keeps only the token's configured *name*,
  when they signed in, and a random CSRF token; never the API token.
- The signing key is derived from the configured tokens (HMAC-SHA256 with a fixed label and the
  service's name), so every worker and replica agrees on it without another secret, and
  changing `API_TOKENS` signs everyone out.
- The cookie is `HttpOnly`, `SameSite=Strict`, scoped to `/imports`, and `Secure` unless the
  request is plain http from and to loopback with no proxy in between (`make run` on a laptop):
  a browser would not keep a `Secure` cookie set over http. Anything else — https, a proxy, or
  another host — gets `Secure`, so serve the dashboard over https there.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from urllib.parse import urlsplit

from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface

KEY_LABEL = b"curavani import dashboard session key v1"
MAX_AGE_SECONDS = 12 * 3600  # a shift; then sign in again
USER, SINCE, CSRF = "dashboard_user", "dashboard_since", "csrf"
PROXY_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")


def secret_key(tokens: dict[str, str] | list[str], service: str) -> str:
    """The same for every process given the same tokens; another one once any token changes."""
    message = json.dumps([service, sorted(tokens)]).encode()
    return hmac.new(KEY_LABEL, message, hashlib.sha256).hexdigest()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_on_loopback() -> bool:
    if request.scheme != "http" or any(name in request.headers for name in PROXY_HEADERS):
        return False
    return _is_loopback(urlsplit(f"//{request.host}").hostname) and _is_loopback(request.remote_addr)


class DashboardSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, with `Secure` decided per request (see the module docstring)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return not plain_http_on_loopback()


def configure(app: Flask, tokens: dict[str, str], service: str) -> None:
    app.config.update(
        SECRET_KEY=secret_key(tokens, service),
        SESSION_COOKIE_NAME=f"{service}_dashboard",  # both services may share a host: one cookie each
        SESSION_COOKIE_PATH="/imports",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=True,  # the interface lifts it for plain http on loopback only
    )
    app.session_interface = DashboardSessionInterface()


def signed_in_as() -> str | None:
    name, since = session.get(USER), session.get(SINCE)
    if not name or not isinstance(since, int) or time.time() - since > MAX_AGE_SECONDS:
        return None
    return name


def sign_in(name: str) -> None:
    session.clear()  # a fresh session, and a fresh CSRF token, at every sign-in
    session[USER] = name
    session[SINCE] = int(time.time())
    session[CSRF] = secrets.token_urlsafe(32)


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    if CSRF not in session:
        session[CSRF] = secrets.token_urlsafe(32)
    return session[CSRF]


def csrf_valid(presented: str | None) -> bool:
    expected = session.get(CSRF)
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), str(expected).encode())
