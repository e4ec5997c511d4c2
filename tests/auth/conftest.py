"""Fixtures of the access tests (SPEC §11): a real clients file of service clients — one holding
only each scope, one holding every scope but it, organisation-bound calendars — and apps that
accept only those (no `API_TOKENS`)."""
from __future__ import annotations

from typing import Any

import pytest

from .support import Clients, standard_clients, write_clients


@pytest.fixture
def clients(tmp_path) -> Clients:
    return write_clients(tmp_path / "clients.toml", standard_clients())


@pytest.fixture
def client_app(make_app, clients):
    """`client_app("patient", **overrides)`: an app accepting the clients of `clients` only."""
    def factory(service: str, **overrides: Any):
        return make_app(service, API_TOKENS={}, AUTH_CLIENTS_FILE=str(clients.path), **overrides)
    return factory
