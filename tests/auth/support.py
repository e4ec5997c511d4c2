"""What the access tests share: clients files of service clients, their tokens, the organisations."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.auth.clients import token_sha256
from shared.auth.scopes import SCOPES

ORG_A, ORG_B = "praxis-67", "praxis-99"


@dataclass(frozen=True)
class Clients:
    """The tokens of the clients in `path`, by client name."""

    path: Path
    tokens: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def client_entry(name: str, token: str, scopes: list[str] | set[str], org: str | None = None,
                 expires: str | None = None) -> str:
    lines = [f"[clients.{name}]", f'token_sha256 = "{token_sha256(token).hex()}"',
             "scopes = [" + ", ".join(f'"{s}"' for s in sorted(scopes)) + "]"]
    if org:
        lines.append(f'org = "{org}"')
    if expires:
        lines.append(f"expires = {expires}")
    return "\n".join(lines) + "\n"


def token_of(name: str) -> str:
    return f"token-of-{name}-0123456789abcdef0123456789"


def standard_clients() -> dict[str, tuple[set[str], str | None]]:
    clients: dict[str, tuple[set[str], str | None]] = {"everything": (set(SCOPES), None)}
    for scope in SCOPES:
        slug = scope.replace(":", "-")
        clients[f"only-{slug}"] = ({scope}, None)
        clients[f"without-{slug}"] = (set(SCOPES) - {scope}, None)
    for org in (ORG_A, ORG_B):
        clients[f"calendar-{org}"] = ({"appointments:read", "appointments:write"}, org)
    return clients


def write_clients(path: Path, clients: dict[str, tuple[set[str], str | None]]) -> Clients:
    path.write_text("".join(client_entry(name, token_of(name), scopes, org)
                            for name, (scopes, org) in clients.items()))
    return Clients(path, {name: token_of(name) for name in clients})
