"""Service clients from the TOML file named by `AUTH_CLIENTS_FILE` (SPEC §11).

    [clients.calendar-praxis-67]
    token_sha256 = "<hex SHA-256 of the token>"   # the token itself is never stored
    scopes = ["appointments:read", "appointments:write"]
    org = "praxis-67"                              # optional: binds the client to one organisation
    expires = 2027-06-30                           # optional: refused from that day on (UTC)

Decisions:
- The standard library's `tomllib` reads the file; `hmac.compare_digest` compares the SHA-256 of a
  presented token with every client's, always all of them, so timing tells nothing.
- Tokens are random (`add_client` makes ≥ 32 bytes), so an unsalted SHA-256 is enough: there is no
  password to guess by brute force, and a hash is what lets the file be read by people.
- Rotation without a restart: a request looks at the file's `stat` at most once a second and
  reads it again when it changed, so an edit is in force within about a second in every worker.
  A malformed edit keeps the last good clients, logs an error (the place, never a token) and
  counts `curavani_auth_clients_reload_errors_total`. At start a malformed file is a `ConfigError`.
- A file that does not exist yet holds no clients (a warning at start): `add_client` creates it,
  and the running service picks it up like any edit.
- `expires` is a TOML date: the token works until the end of the day before (UTC).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from prometheus_client import Counter

from shared.auth.scopes import Principal, UnknownScope, known_scopes

log = logging.getLogger(__name__)

RELOAD_ERRORS = Counter("curavani_auth_clients_reload_errors", "Edits of AUTH_CLIENTS_FILE that could not be "
                        "read (the last good clients stay in force)", ["service"])
CHECK_INTERVAL_SECONDS = 1.0  # how often a request may look at the file's stat
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # a bare TOML key, and never `oidc:…`
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
CLIENT_KEYS = {"token_sha256", "scopes", "org", "expires"}
TOKEN_BYTES = 32


class ClientsFileError(ValueError):
    """The file cannot be used; the message names the file and the place, never a token."""


@dataclass(frozen=True)
class Client:
    name: str
    token_sha256: bytes
    scopes: frozenset[str]
    org: str | None = None
    expires: date | None = None

    def expired(self, today: date) -> bool:
        return self.expires is not None and today >= self.expires

    def principal(self) -> Principal:
        return Principal(self.name, self.scopes, "client", self.org)


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_clients(text: str, source: str) -> tuple[Client, ...]:
    """The clients of a file's text; `ClientsFileError` naming `source` and the place otherwise."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ClientsFileError(f"{source}: not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"clients"})
    if unknown:
        raise ClientsFileError(f"{source}: unknown table or key {unknown[0]!r} (only [clients.NAME] tables)")
    tables = document.get("clients", {})
    if not isinstance(tables, dict):
        raise ClientsFileError(f"{source}: `clients` must be a table of [clients.NAME] tables")
    clients, hashes = [], set()
    for name, entry in tables.items():
        client = _client(name, entry, f"{source}: [clients.{name}]")
        if client.token_sha256 in hashes:
            raise ClientsFileError(f"{source}: [clients.{name}]: token_sha256 is another client's too")
        hashes.add(client.token_sha256)
        clients.append(client)
    return tuple(clients)


def _client(name: str, entry: object, where: str) -> Client:
    if not NAME_RE.match(name):
        raise ClientsFileError(f"{where}: a name is letters, digits, '.', '_' and '-' (at most 100)")
    if not isinstance(entry, dict):
        raise ClientsFileError(f"{where}: must be a table")
    unknown = sorted(set(entry) - CLIENT_KEYS)
    if unknown:
        raise ClientsFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(CLIENT_KEYS))})")
    hashed = entry.get("token_sha256")
    if not isinstance(hashed, str) or not HASH_RE.match(hashed.lower()):
        raise ClientsFileError(f"{where}: token_sha256 must be the 64 hex digits of the token's SHA-256")
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise ClientsFileError(f"{where}: scopes must be a non-empty list of scope names")
    try:
        scope_set = known_scopes(scopes)
    except UnknownScope as error:
        raise ClientsFileError(f"{where}: {error}") from None
    org = entry.get("org")
    if org is not None and (not isinstance(org, str) or not org.strip() or len(org) > 100):
        raise ClientsFileError(f"{where}: org must be a non-empty string (at most 100 characters)")
    expires = entry.get("expires")
    if isinstance(expires, datetime) or (expires is not None and not isinstance(expires, date)):
        raise ClientsFileError(f"{where}: expires must be a TOML date such as 2027-06-30")
    return Client(name, bytes.fromhex(hashed), scope_set, org.strip() if org else None, expires)


class ClientsFile:
    """The clients of one file, kept current (see the module docstring). Thread-safe: a reload
    swaps one tuple; readers use whichever tuple they picked up."""

    def __init__(self, path: str | os.PathLike[str], service: str):
        self.path = Path(path)
        self.service = service
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()
        self._signature = self._stat()
        self.clients: tuple[Client, ...] = ()
        if self._signature is None:
            log.warning("AUTH_CLIENTS_FILE %s does not exist yet: no service client is accepted until it "
                        "is created (flask auth add-client creates it)", self.path)
        else:
            self.clients = parse_clients(self.path.read_text(encoding="utf-8"), str(self.path))

    def find(self, presented: str) -> Client | None:
        """The client whose token this is, expired or not; None for no client's."""
        self._maybe_reload()
        digest = token_sha256(presented)
        found = None
        for client in self.clients:  # every one, always
            if hmac.compare_digest(digest, client.token_sha256):
                found = client
        return found

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < CHECK_INTERVAL_SECONDS or not self._lock.acquire(blocking=False):
            return  # another thread is looking: this request uses the clients in force
        try:
            self._checked_at = now
            signature = self._stat()
            if signature == self._signature:
                return
            self._signature = signature
            self.reload()
        finally:
            self._lock.release()

    def reload(self) -> None:
        """Read the file again now; on failure keep the last good clients (logged and counted)."""
        try:
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
            clients = parse_clients(text, str(self.path))
        except (ClientsFileError, OSError, UnicodeDecodeError) as error:
            RELOAD_ERRORS.labels(self.service).inc()
            detail = error if isinstance(error, ClientsFileError) else f"{self.path}: {type(error).__name__}"
            log.error("AUTH_CLIENTS_FILE not reloaded, the last good clients stay in force: %s", detail)
            return
        self.clients = clients
        log.info("AUTH_CLIENTS_FILE reloaded: %d clients", len(clients))


def today_utc() -> date:
    return datetime.now(UTC).date()


def add_client(path: str | os.PathLike[str], name: str, scopes: list[str], *, org: str | None = None,
               expires: date | None = None) -> str:
    """Append a new client to the file (created, mode 0600, if missing) and return its token,
    which is stored nowhere: only its hash is written. The whole file is checked before it is
    replaced (atomically), so a mistake leaves it as it was."""
    path = Path(path)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    existing = parse_clients(old, str(path))
    if any(client.name == name for client in existing):
        raise ClientsFileError(f"{path}: a client named {name!r} exists already")
    lines = [f"[clients.{name}]", f'token_sha256 = "{token_sha256(token).hex()}"',
             "scopes = [" + ", ".join(f'"{scope}"' for scope in scopes) + "]"]
    if org is not None:
        lines.append(f"org = {_toml_string(org)}")
    if expires is not None:
        lines.append(f"expires = {expires.isoformat()}")
    separator = "" if not old or old.endswith("\n\n") else ("\n" if old.endswith("\n") else "\n\n")
    new = f"{old}{separator}" + "\n".join(lines) + "\n"
    parse_clients(new, str(path))  # the name, scopes and org checked as the service will read them
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(new)
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return token


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(character) < 0x20 for character in escaped):
        raise ClientsFileError("org must not hold control characters")
    return f'"{escaped}"'
