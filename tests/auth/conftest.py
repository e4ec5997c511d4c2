"""Fixtures of the access tests (SPEC §11): a real clients file of service clients — one holding
only each scope, one holding every scope but it, organisation-bound calendars — and apps that
accept only those (no `API_TOKENS`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import free_port
from identity_provider import OidcProvider

from shared.auth.scopes import SCOPES

from .support import ORG_A, Clients, standard_clients, write_clients


@pytest.fixture
def clients(tmp_path) -> Clients:
    return write_clients(tmp_path / "clients.toml", standard_clients())


@pytest.fixture
def client_app(make_app, clients):
    """`client_app("patient", **overrides)`: an app accepting the clients of `clients` only."""
    def factory(service: str, **overrides: Any):
        return make_app(service, API_TOKENS={}, AUTH_CLIENTS_FILE=str(clients.path), **overrides)
    return factory


# ---- a real OpenID provider (tests/identity_provider.py) -----------------------------------------

AUDIENCE = "https://api.curavani.test"
OIDC_CLIENTS = [
    {"client_id": "staff-app", "client_secret": "staff-app-secret-0123456789abcdef", "scope": " ".join(SCOPES)},
    {"client_id": "imports-reader", "client_secret": "reader-secret-0123456789abcdef", "scope": "imports:read"},
    {"client_id": "calendar-sso", "client_secret": "calendar-secret-0123456789abcdef",
     "scope": "appointments:read appointments:write", "org_id": ORG_A},
]
ACCOUNTS = {"oncall": {"scopes": ["imports:read", "imports:operate"]}, "viewer": {"scopes": ["imports:read"]}}
DASHBOARD_CLIENT = "import-dashboard"


@pytest.fixture(scope="session")
def dashboard_port() -> int:
    """Where the dashboard's browser test serves the app: its callback is registered at the provider."""
    return free_port()


def start_provider(workdir: Path, dashboard_port: int) -> OidcProvider:
    return OidcProvider.start(
        workdir, audience=AUDIENCE, scopes=list(SCOPES), clients=OIDC_CLIENTS, accounts=ACCOUNTS,
        web_clients=[{"client_id": DASHBOARD_CLIENT,
                      "redirect_uris": [f"http://127.0.0.1:{dashboard_port}/imports/login/callback"]}])


@pytest.fixture(scope="session")
def identity_provider(tmp_path_factory, dashboard_port):
    provider = start_provider(tmp_path_factory.mktemp("identity"), dashboard_port)
    yield provider
    provider.stop()


@pytest.fixture
def oidc_app(make_app, identity_provider):
    """`oidc_app("therapist", **overrides)`: an app accepting the provider's access tokens only."""
    def factory(service: str, **overrides: Any):
        return make_app(service, API_TOKENS={}, OIDC_ISSUER=identity_provider.issuer, OIDC_AUDIENCE=AUDIENCE,
                        **overrides)
    return factory
