"""People's credentials: OpenID Connect JWT access tokens of `OIDC_ISSUER` (SPEC §11).

Why PyJWT: it is the JWT library Flask projects already use, its `PyJWKClient` caches the
provider's keys and refetches them for an unknown `kid` with a cooldown (30 s: the rate SPEC §11
allows), and `jwt.decode` checks `iss`, `aud`, `exp`, `nbf` with a leeway when told to. Authlib
(also installed, for the dashboard's sign-in) could validate as well; one library for one job.

What is checked, whatever the token's header says: the algorithm is one of `ALGORITHMS` (never
`none`, never an `HS*` keyed with a public key), the signature by the provider's key named by
`kid`, `iss`, `aud`, `exp` and `nbf` with 60 s leeway, and `sub` present. Scopes come from `scope`
(space-separated) or `scp` (a list); names we do not define are ignored. `org_id` binds the person
to one organisation. The actor is `oidc:<sub>`.

The discovery document (`<issuer>/.well-known/openid-configuration`) is read when the first token
arrives, not at start, so a service starts while its provider is down. While neither it nor the
keys can be fetched, a token is answered 503 (the provider is down, the token may be fine), with
at most one attempt per `RETRY_SECONDS`; `/ready` shows the state as a warning.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import jwt
import requests

from shared.auth.scopes import ALL_SCOPES, Principal
from shared.background import ComponentReport, Problem

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "PS256", "ES256"]
LEEWAY_SECONDS = 60
KEY_REFRESH_COOLDOWN_SECONDS = 30.0  # an unknown `kid` refetches the keys at most this often
KEY_CACHE_SECONDS = 300.0
HTTP_TIMEOUT_SECONDS = 5.0
RETRY_SECONDS = 5.0  # after a failed fetch, tokens get 503 at once for this long


class InvalidToken(Exception):
    """The token is not one of the provider's, or no longer valid: 401. The message is for logs
    and the `error_description`; it never holds the token."""

    def __init__(self, message: str, reason: str = "invalid", name: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.name = name  # the credential's name, when it is known (an expired client)


class ProviderUnavailable(Exception):
    """The provider's keys cannot be fetched and none are cached: 503."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class OidcVerifier:
    """One per app (and so per process): it holds the key cache. Also a background component, so
    that `/ready` reports on the provider (its start and stop do nothing)."""

    name = "oidc"

    def __init__(self, issuer: str, audience: str):
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self._lock = threading.Lock()
        self._jwks: jwt.PyJWKClient | None = None
        self._failed_at: float | None = None
        self._failure: str | None = None

    # ---- the provider's keys -------------------------------------------------------------------

    def _key_client(self) -> jwt.PyJWKClient:
        """The JWKS client, from the discovery document, made once it could be read."""
        if self._jwks is not None:
            return self._jwks
        with self._lock:
            if self._jwks is not None:
                return self._jwks
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
                raise ProviderUnavailable(self._failure or "the identity provider is unreachable")
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                response = requests.get(url, timeout=HTTP_TIMEOUT_SECONDS)
                response.raise_for_status()
                document = response.json()
                if document.get("issuer", "").rstrip("/") != self.issuer:
                    raise ValueError("its discovery document names another issuer")
                jwks_uri = document["jwks_uri"]
            except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as error:
                self._fail(f"discovery document {url} not readable ({type(error).__name__})")
                raise ProviderUnavailable(self._failure or "") from None
            self._jwks = jwt.PyJWKClient(jwks_uri, cache_keys=False, lifespan=KEY_CACHE_SECONDS,
                                         timeout=HTTP_TIMEOUT_SECONDS,
                                         cooldown_duration=KEY_REFRESH_COOLDOWN_SECONDS)
            self._failed_at = self._failure = None
            return self._jwks

    def _fail(self, detail: str) -> None:
        self._failed_at, self._failure = time.monotonic(), detail
        log.warning("identity provider %s: %s", self.issuer, detail)

    def _signing_key(self, kid: str) -> jwt.PyJWK:
        client = self._key_client()
        cached = client.jwk_set_cache is not None and client.jwk_set_cache.get() is not None
        if not cached and self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
            raise ProviderUnavailable(self._failure or "the identity provider is unreachable")
        try:
            key = client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError:
            if cached:
                raise InvalidToken("signed with a key the provider does not publish", "unknown_key") from None
            self._fail("its keys (jwks_uri) cannot be fetched")
            raise ProviderUnavailable(self._failure or "") from None
        except jwt.PyJWKClientError:
            raise InvalidToken("signed with a key the provider does not publish", "unknown_key") from None
        self._failed_at = self._failure = None
        return key

    # ---- tokens --------------------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidToken("not a JWT") from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken(f"algorithm {str(header.get('alg'))[:20]!r} is not accepted", "algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token names no key (kid)")
        key = self._signing_key(kid)
        try:
            claims = jwt.decode(token, key, algorithms=ALGORITHMS, audience=self.audience, issuer=self.issuer,
                                leeway=LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired", "expired") from None
        except jwt.InvalidTokenError as error:
            raise InvalidToken(type(error).__name__) from None
        return Principal(f"oidc:{claims['sub']}", _scopes(claims), "oidc", _org(claims))

    def report(self, *, database_ok: bool) -> ComponentReport:
        warnings = []
        if self._failure is not None:
            warnings.append(Problem("oidc", f"identity provider {self.issuer}: {self._failure}; "
                                            "JWT requests answer 503"))
        return ComponentReport({"issuer": self.issuer, "keys_fetched": self._jwks is not None}, warnings)

    def death(self) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


def _scopes(claims: Mapping[str, object]) -> frozenset[str]:
    raw = claims.get("scope")
    names = raw.split() if isinstance(raw, str) else claims.get("scp", [])
    if not isinstance(names, list):
        return frozenset()
    return frozenset(name for name in names if isinstance(name, str)) & ALL_SCOPES


def _org(claims: Mapping[str, object]) -> str | None:
    org = claims.get("org_id")
    return org if isinstance(org, str) and org else None
