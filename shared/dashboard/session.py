"""Who is signed in to the dashboard, kept in Flask's signed session cookie, and its CSRF token.

- On-call signs in by pasting a token of this service, or (with `OIDC_CLIENT_ID`) at the identity
  provider. The cookie keeps the credential's *name* (`oidc:<sub>` for a person), its scopes and
  organisation, when they signed in, and a random CSRF token; never a token.
- The cookie is signed with `DASHBOARD_SECRET_KEY` (SPEC §11): a key of its own, the same in every
  worker and replica, so that rotating a token signs nobody out. Without it the dashboard is off.
- The cookie is `HttpOnly`, `SameSite=Lax` (the provider's redirect back to the dashboard must carry
  it: `Strict` would lose the sign-in's state; the CSRF token guards every form), scoped to
  `/imports`, and `Secure` unless the request is plain http from and to loopback with no proxy in
  between (`make run` on a laptop): a browser would not keep a `Secure` cookie set over http.
  Anything else — https, a proxy, or another host — gets `Secure`, so serve the dashboard over
  https there.
- What a signed-in person may do is decided by the scopes kept at sign-in: pages need
  `imports:read`, buttons `imports:operate`. A session lasts at most `MAX_AGE_SECONDS`.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from urllib.parse import urlsplit

from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface

from shared.auth import Principal

MAX_AGE_SECONDS = 12 * 3600  # a shift; then sign in again
USER, SCOPES, ORG, KIND, SINCE, CSRF = ("dashboard_user", "dashboard_scopes", "dashboard_org", "dashboard_kind",
                                        "dashboard_since", "csrf")
PROXY_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")


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
    """Flask's signed cookie, with `Secure` decided per request (see the module docstring), and
    signed for one service: both may share `DASHBOARD_SECRET_KEY` and a host, and one's cookie
    must not sign anybody in to the other."""

    def __init__(self, service: str):
        self.salt = f"curavani dashboard session {service}"

    def get_cookie_secure(self, app: Flask) -> bool:
        return not plain_http_on_loopback()


def configure(app: Flask, secret_key: str, service: str) -> None:
    app.config.update(
        SECRET_KEY=secret_key,
        SESSION_COOKIE_NAME=f"{service}_dashboard",  # both services may share a host: one cookie each
        SESSION_COOKIE_PATH="/imports",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=True,  # the interface lifts it for plain http on loopback only
    )
    app.session_interface = DashboardSessionInterface(service)


def signed_in() -> Principal | None:
    """Who is signed in, with the scopes and organisation they signed in with; None if nobody."""
    name, since = session.get(USER), session.get(SINCE)
    if not name or not isinstance(since, int) or time.time() - since > MAX_AGE_SECONDS:
        return None
    return Principal(name, frozenset(session.get(SCOPES) or ()), session.get(KIND) or "token", session.get(ORG))


def sign_in(principal: Principal) -> None:
    session.clear()  # a fresh session, and a fresh CSRF token, at every sign-in
    session[USER] = principal.name
    session[SCOPES] = sorted(principal.scopes)
    session[ORG] = principal.org
    session[KIND] = principal.kind
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
