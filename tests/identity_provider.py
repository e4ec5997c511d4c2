"""A real OpenID provider on loopback for the tests (SPEC §11): the npm package `oidc-provider`
(panva, OpenID Certified) on the installed Node.js, from `tests/identity/` (`npm ci` from its lock
file on first use; `make test` needs nothing else). Not a mock: discovery, JWKS, the client
credentials grant, the authorization code flow with PKCE and its login page are the provider's own.

- API calls: `client_credentials_token(client_id, scope)` asks the token endpoint for a JWT access
  token (audience `audience`) by the client credentials grant.
- People: a browser sent to the provider's authorization endpoint gets its built-in login page
  (`devInteractions`): fill `input[name=login]` with an account id of `accounts`, any
  `input[name=password]`, click `button[type=submit]`; the account's scopes are granted without a
  consent page, and the browser is redirected to the client's redirect URI with a `code`.
- Keys: the signing key is ours (an RSA key made here), so tests can forge tokens with a key of
  their own and know the provider's public key; `rotate_keys()` restarts the provider on the same
  port with a new key under a new `kid`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import free_port
from jwt.algorithms import RSAAlgorithm

PROVIDER_DIR = Path(__file__).resolve().parent / "identity"
START_TIMEOUT = 30.0


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.pop("key_ops", None)  # PyJWT writes ["sign"]; the provider would publish it, and verifiers refuse to verify
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def ensure_installed() -> None:
    """`npm ci` in tests/identity once; a clear failure when Node.js or npm is missing."""
    if (PROVIDER_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the OpenID provider of the tests needs Node.js and npm (apt-get install nodejs npm)")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PROVIDER_DIR, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"`npm ci` in {PROVIDER_DIR} failed:\n{result.stdout}\n{result.stderr}")


@dataclass
class OidcProvider:
    workdir: Path
    audience: str
    scopes: list[str]
    clients: list[dict[str, Any]]
    web_clients: list[dict[str, Any]]
    accounts: dict[str, dict[str, Any]]
    port: int = field(default_factory=free_port)
    key: rsa.RSAPrivateKey = field(default_factory=rsa_key)
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, **settings: Any) -> OidcProvider:
        ensure_installed()
        provider = cls(workdir, **settings)
        provider._run()
        return provider

    def _run(self) -> None:
        config = {"port": self.port, "issuer": self.issuer, "audience": self.audience, "scopes": self.scopes,
                  "jwks": {"keys": [private_jwk(self.key, self.kid)]}, "clients": self.clients,
                  "web_clients": self.web_clients, "accounts": self.accounts}
        path = self.workdir / "identity-provider.json"
        path.write_text(json.dumps(config))
        self.output = []
        self.process = subprocess.Popen(["node", str(PROVIDER_DIR / "provider.mjs"), str(path)], cwd=PROVIDER_DIR,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def read(stream: Any) -> None:
            for line in stream:
                self.output.append(line.rstrip())
                if line.startswith("READY "):
                    ready.set()

        threading.Thread(target=read, args=(self.process.stdout,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the OpenID provider did not start:\n" + "\n".join(self.output))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def rotate_keys(self) -> None:
        """A new signing key under a new `kid`, the old one gone: a restart on the same port."""
        self.stop()
        self.key, self.kid = rsa_key(), uuid.uuid4().hex[:12]
        self._run()

    def discovery(self) -> dict[str, Any]:
        response = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def client_credentials_token(self, client_id: str, scope: str | None = None) -> str:
        client = next(c for c in self.clients if c["client_id"] == client_id)
        data = {"grant_type": "client_credentials", "resource": self.audience}
        if scope is not None:
            data["scope"] = scope
        response = requests.post(self.discovery()["token_endpoint"], data=data, timeout=10,
                                 auth=(client_id, client["client_secret"]))
        if response.status_code != 200:
            raise RuntimeError(f"the provider refused a token to {client_id}: {response.text}")
        token: str = response.json()["access_token"]
        return token
