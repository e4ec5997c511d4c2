"""What a credential may do (SPEC §11): the scopes, and the principal a request acts as.

Every `/api/` route declares the one scope it needs with `Blueprint.scope` (shared/http.py); the
guard in `shared.auth` refuses the request before the view runs when the credential lacks it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# The scope table of SPEC §11: name → what it allows (also the OpenAPI description).
SCOPES: dict[str, str] = {
    "patients:read": "patient reads: record, `?at=`, history, consents, registrations",
    "patients:write": "patient creates, updates, deletes, `/api/patients/batch`",
    "patients:export": "`GET /api/patients/<id>/export`",
    "patients:erase": "`POST /api/patients/<id>/erasure`",
    "patients:audit": "`GET /api/patients/<id>/access-log`",
    "therapists:read": "therapists and their history",
    "therapists:write": "therapist creates, updates, deletes, `/api/therapists/batch`",
    "appointments:read": "appointments: list, read, history",
    "appointments:write": "appointments: upsert, cancel, batch",
    "participants:read": "`GET /api/appointments/participants…`",
    "participants:write": "`POST /api/appointments/participants`",
    "imports:read": "`GET /api/imports…` and the import dashboard",
    "imports:operate": "run now, retry (API and dashboard buttons)",
}
ALL_SCOPES = frozenset(SCOPES)

CredentialKind = Literal["token", "client", "oidc"]


class UnknownScope(ValueError):
    """A scope name that SPEC §11 does not define."""


def known_scopes(names: Iterable[str]) -> frozenset[str]:
    """`names` as a set, refusing (with the first unknown name) any that is not ours."""
    scopes = frozenset(names)
    unknown = sorted(scopes - ALL_SCOPES)
    if unknown:
        raise UnknownScope(f"unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    return scopes


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. `name` is the actor written to history and the access log: the
    `API_TOKENS` name, the client's name, or `oidc:<sub>` — never a person's name or address.
    `org` binds the credential to one organisation (appointments); None may name any."""

    name: str
    scopes: frozenset[str]
    kind: CredentialKind
    org: str | None = None

    def holds(self, scope: str) -> bool:
        return scope in self.scopes
