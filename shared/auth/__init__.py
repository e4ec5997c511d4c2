"""Who may call `/api/` and what they may do (SPEC §5, §11): least privilege.

Three kinds of bearer credential, tried in this order:
1. `API_TOKENS` (development and tests): every scope, a warning at start;
2. service clients of `AUTH_CLIENTS_FILE` (`shared.auth.clients`): their scopes, maybe an `org`;
3. OpenID Connect JWT access tokens of `OIDC_ISSUER` (`shared.auth.oidc`): people.

`authenticate` runs before every request, before the body is read: it answers 401 (no or a bad
credential), 403 (the route's scope is missing; `WWW-Authenticate` as RFC 6750 says) or 503 (the
identity provider's keys cannot be fetched), each logged at WARNING with the credential's name,
never its token, and counted in `curavani_http_auth_denied_total{reason}`. Otherwise it puts the
`Principal` in `g.principal` (and its name, the actor, in `g.actor`). Every `/api/` route declares
its scope with `Blueprint.scope` (shared/http.py); `check_route_scopes` refuses to build an app in
which one does not, so a new route cannot be open by mistake.
"""
from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import click
from flask import Flask, Response, current_app, g, request
from flask.cli import AppGroup
from prometheus_client import Counter

from shared.auth.clients import RELOAD_ERRORS, ClientsFile, ClientsFileError, add_client, today_utc
from shared.auth.oidc import InvalidToken, OidcVerifier, ProviderUnavailable, looks_like_jwt
from shared.auth.scopes import ALL_SCOPES, SCOPES, Principal, UnknownScope, known_scopes
from shared.background import register_component
from shared.errors import DomainError, WrongOrganisation, domain_error_to_problem, problem

__all__ = ["ALL_SCOPES", "SCOPES", "Principal", "check_route_scopes", "init_auth", "required_scopes"]

log = logging.getLogger(__name__)

PUBLIC_API_PATHS = ("/api/docs", "/api/openapi.json")
DENIAL_REASONS = ("missing", "invalid", "expired", "unknown_key", "algorithm", "insufficient_scope",
                  "wrong_organisation", "provider_unavailable")
DENIED = Counter("curavani_http_auth_denied", "Requests refused by authentication or authorisation, by reason "
                 f"({', '.join(DENIAL_REASONS)})", ["service", "reason"])
SCOPES_ATTRIBUTE = "_required_scopes"


@dataclass
class Credentials:
    """What this app accepts: `app.extensions["auth"]`."""

    tokens: dict[str, str]  # API_TOKENS: token → name
    clients: ClientsFile | None
    oidc: OidcVerifier | None

    def principal(self, presented: str) -> Principal:
        """The principal a presented token stands for; `InvalidToken` or `ProviderUnavailable`."""
        name = token_name(presented, self.tokens)
        if name is not None:
            return Principal(name, ALL_SCOPES, "token")
        if self.clients is not None:
            client = self.clients.find(presented)
            if client is not None:
                if client.expired(today_utc()):
                    raise InvalidToken(f"client {client.name} expired on {client.expires}", "expired", client.name)
                return client.principal()
        if self.oidc is not None and looks_like_jwt(presented):
            return self.oidc.verify(presented)
        raise InvalidToken("not a token of this service")


def token_name(presented: str, tokens: dict[str, str]) -> str | None:
    # Compare against every configured token, always, so timing does not reveal which matched.
    found = None
    for token, name in tokens.items():
        if hmac.compare_digest(presented.encode(), token.encode()):
            found = name
    return found


# ---- which scope a route needs ---------------------------------------------------------------

def required_scopes(app: Flask, endpoint: str, method: str) -> tuple[str, ...] | None:
    """The scopes (any one of them will do) the view of `endpoint` declares for `method`; None
    when it declares none. Looked up once per endpoint and method."""
    cache: dict[tuple[str, str], tuple[str, ...] | None] = app.extensions.setdefault("route_scopes", {})
    key = (endpoint, method)
    if key not in cache:
        view: Any = app.view_functions.get(endpoint)
        view_class = getattr(view, "view_class", None)
        if view_class is not None:
            view = getattr(view_class, "get" if method == "HEAD" else method.lower(), None)
        cache[key] = getattr(view, SCOPES_ATTRIBUTE, None)
    return cache[key]


def declare_scopes(view: Callable[..., object], scopes: tuple[str, ...]) -> None:
    """Mark a view as needing one of `scopes` (what `Blueprint.scope` does)."""
    known_scopes(scopes)
    setattr(view, SCOPES_ATTRIBUTE, scopes)


def check_route_scopes(app: Flask) -> None:
    """Refuse an app with an `/api/` route whose method declares no scope."""
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.rule.startswith(PUBLIC_API_PATHS):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if not required_scopes(app, rule.endpoint, method):
                missing.append(f"{method} {rule.rule}")
    if missing:
        raise RuntimeError("these routes declare no scope (Blueprint.scope): " + ", ".join(missing))


def require_scope(scope: str) -> None:
    """For a view whose scope depends on what it finds (a stored batch): 403 without it."""
    principal: Principal = g.principal
    if not principal.holds(scope):
        raise InsufficientScope(scope)


class InsufficientScope(DomainError):
    status, type, title = 403, "insufficient-scope", "Insufficient scope"

    def __init__(self, scope: str):
        super().__init__(f"this credential does not hold the scope {scope}", required_scope=scope)
        self.scope = scope


# ---- the guard --------------------------------------------------------------------------------

def authenticate() -> Response | None:
    if not request.path.startswith("/api/") or request.path.startswith(PUBLIC_API_PATHS):
        return None
    if request.method == "OPTIONS":
        return None  # CORS preflight carries no credentials
    credentials: Credentials = current_app.extensions["auth"]
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return _deny(401, "missing", "send Authorization: Bearer <token>")
    try:
        principal = credentials.principal(presented)
    except InvalidToken as error:
        return _deny(401, error.reason, f"the bearer token is not valid ({error})", error="invalid_token",
                     name=error.name)
    except ProviderUnavailable as error:
        return _deny(503, "provider_unavailable", f"the identity provider cannot be reached: {error}; try again")
    g.principal, g.actor = principal, principal.name
    if request.endpoint is None or request.routing_exception is not None:
        return None  # 404 or 405: routing answers it, to an authenticated caller only
    scopes = required_scopes(current_app, request.endpoint, request.method) or ()
    if not any(principal.holds(scope) for scope in scopes):
        return _insufficient(principal, scopes[0] if scopes else "?")
    return None


def _realm() -> str:
    return current_app.config.get("SERVICE_NAME", "api")


def _deny(status: int, reason: str, detail: str, *, error: str | None = None,
          name: str | None = None) -> Response:
    _log_denial(reason, name)
    challenge = f'Bearer realm="{_realm()}"' + (f', error="{error}"' if error else "")
    headers = {"WWW-Authenticate": challenge} if status == 401 else {"Retry-After": "5"}
    title = {401: "Unauthorized", 503: "Service Unavailable"}[status]
    return problem(status, title, detail, headers=headers)


def _insufficient(principal: Principal, scope: str) -> Response:
    _log_denial("insufficient_scope", principal.name)
    error = InsufficientScope(scope)
    response = domain_error_to_problem(error)
    response.headers["WWW-Authenticate"] = (f'Bearer realm="{_realm()}", error="insufficient_scope", '
                                            f'scope="{scope}"')
    return response


def _log_denial(reason: str, name: str | None) -> None:
    route = request.url_rule.rule if request.url_rule is not None else "(no route)"
    log.warning("access denied (%s): %s %s by %s", reason, request.method, route, name or "an unknown credential")
    DENIED.labels(current_app.config.get("SERVICE_NAME", "?"), reason).inc()


def _scope_error(error: InsufficientScope) -> Response:
    return _insufficient(g.principal, error.scope)


def _wrong_organisation(error: WrongOrganisation) -> Response:
    _log_denial("wrong_organisation", g.principal.name if "principal" in g else None)
    return domain_error_to_problem(error)


# ---- set-up ----------------------------------------------------------------------------------

def init_auth(app: Flask) -> None:
    """Read the credentials the settings name (a malformed clients file: `ConfigError`), install
    the guard and the `flask auth` commands."""
    from shared.config import ConfigError

    settings = app.extensions["settings"]
    service = app.config["SERVICE_NAME"]
    clients = None
    if settings.AUTH_CLIENTS_FILE:
        try:
            clients = ClientsFile(settings.AUTH_CLIENTS_FILE, service)
        except ClientsFileError as error:
            raise ConfigError(f"AUTH_CLIENTS_FILE {error}") from None
    oidc = None
    if settings.OIDC_ISSUER:
        oidc = OidcVerifier(settings.OIDC_ISSUER, settings.OIDC_AUDIENCE or "")
        register_component(app, oidc)
    if settings.API_TOKENS:
        log.warning("API_TOKENS is set: each of its %d tokens holds every scope. For development and tests; "
                    "give services clients (AUTH_CLIENTS_FILE) and people OpenID Connect", len(settings.API_TOKENS))
    app.extensions["auth"] = Credentials(dict(settings.API_TOKENS), clients, oidc)
    for reason in DENIAL_REASONS:  # at zero from the start, as the runbook's other series
        DENIED.labels(service, reason)
    RELOAD_ERRORS.labels(service)
    app.before_request(authenticate)
    app.register_error_handler(InsufficientScope, _scope_error)
    app.register_error_handler(WrongOrganisation, _wrong_organisation)
    app.cli.add_command(auth_cli)


auth_cli = AppGroup("auth", help="Credentials: service clients of AUTH_CLIENTS_FILE (SPEC §11).")


@auth_cli.command("add-client")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              help=f"a scope the client needs (repeat for more): {', '.join(SCOPES)}")
@click.option("--org", default=None, help="bind the client to this organisation (appointments)")
@click.option("--expires", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="the day (UTC, YYYY-MM-DD) from which the token is refused")
@click.option("--file", "path", default=None, help="the clients file (default: AUTH_CLIENTS_FILE)")
def add_client_command(name: str, scopes: tuple[str, ...], org: str | None, expires: datetime | None,
                       path: str | None) -> None:
    """Make a client with a random token: the token is printed once, only its hash is stored."""
    path = path or current_app.extensions["settings"].AUTH_CLIENTS_FILE
    if not path:
        raise click.UsageError("set AUTH_CLIENTS_FILE or pass --file")
    expires_on: date | None = expires.date() if expires is not None else None
    try:
        known_scopes(scopes)
        token = add_client(path, name, list(scopes), org=org, expires=expires_on)
    except (ClientsFileError, UnknownScope) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"client {name} added to {path} with {', '.join(scopes)}"
               + (f", organisation {org}" if org else "") + (f", expires {expires_on}" if expires_on else ""))
    click.echo("its token (shown this once; give it to the client, store it nowhere else):")
    click.echo(token)

