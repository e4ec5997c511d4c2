"""People's credentials: JWT access tokens of a real OpenID provider (SPEC §11), on loopback
(tests/identity_provider.py). Tokens the provider issues pass with their scopes and `org_id`, the
actor is `oidc:<sub>`; forged, expired, not-yet-valid, wrong-audience, wrong-issuer, `alg: none`
and HS256-keyed-with-the-public-key tokens are all 401; the provider can rotate its keys without
a restart of ours; unknown key ids do not make us hammer its JWKS; a provider that is down is 503."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from appointments.support import appointment
from cryptography.hazmat.primitives import serialization
from helpers import free_port, wait_until
from identity_provider import rsa_key

from shared.auth import oidc

from .conftest import AUDIENCE, start_provider
from .support import ORG_A, ORG_B

THERAPIST = {"basic_info": {"first_name": "Anna", "last_name": "Becker"}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(provider, **changes) -> dict:
    now = int(time.time())
    base = {"iss": provider.issuer, "aud": AUDIENCE, "sub": "person-1", "iat": now, "exp": now + 300,
            "scope": "imports:read"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed_by_the_provider(provider, **changes) -> str:
    """A token signed with the provider's own key and `kid`: only the claims are ours."""
    return jwt.encode(claims(provider, **changes), provider.key, algorithm="RS256", headers={"kid": provider.kid})


@pytest.fixture
def http(oidc_app):
    return oidc_app("therapist").test_client()


def test_a_token_the_provider_issued_passes_with_its_scopes_and_acts_as_oidc_sub(http, identity_provider):
    token = identity_provider.client_credentials_token("staff-app", "therapists:read therapists:write")
    created = http.post("/api/therapists", json=THERAPIST, headers=bearer(token))
    assert created.status_code == 201, created.get_json()
    history = http.get(f"/api/therapists/{created.get_json()['id']}/history", headers=bearer(token)).get_json()
    assert history[0]["actor"] == "oidc:staff-app"
    assert http.get("/api/imports", headers=bearer(token)).status_code == 403  # not asked for, not granted


def test_the_tokens_scopes_bound_what_it_may_do(http, identity_provider):
    token = identity_provider.client_credentials_token("imports-reader", "imports:read")
    assert http.get("/api/imports", headers=bearer(token)).status_code == 200
    refused = http.get("/api/therapists", headers=bearer(token))
    assert refused.status_code == 403 and refused.get_json()["required_scope"] == "therapists:read"


def test_an_org_id_claim_binds_like_a_clients_org(http, identity_provider):
    token = identity_provider.client_credentials_token("calendar-sso", "appointments:read appointments:write")
    assert jwt.decode(token, options={"verify_signature": False})["org_id"] == ORG_A
    assert http.post("/api/appointments", json=appointment("a-1", org=ORG_A), headers=bearer(token)).status_code == 201
    other = http.post("/api/appointments", json=appointment("b-1", org=ORG_B), headers=bearer(token))
    assert other.status_code == 403 and other.get_json()["type"] == "wrong-organisation"


def test_scopes_may_come_as_an_scp_list(http, identity_provider):
    token = signed_by_the_provider(identity_provider, scope=None, scp=["imports:read", "not-ours"])
    assert http.get("/api/imports", headers=bearer(token)).status_code == 200
    assert http.get("/api/therapists", headers=bearer(token)).status_code == 403


def public_pem(provider) -> bytes:
    return provider.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)


def unsigned(provider) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': provider.kid})}.{part(claims(provider))}."


def hs256_with_the_public_key(provider) -> str:
    """Written by hand: PyJWT itself refuses to HMAC-sign with a PEM public key."""
    header = {"alg": "HS256", "typ": "JWT", "kid": provider.kid}

    def part(value: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")
    signing_input = part(header) + b"." + part(claims(provider))
    signature = hmac.new(public_pem(provider), signing_input, hashlib.sha256).digest()  # the classic confusion
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def forged_with_another_key(provider) -> str:
    return jwt.encode(claims(provider), rsa_key(), algorithm="RS256", headers={"kid": provider.kid})


BAD_TOKENS = {
    "forged (another key, the provider's kid)": forged_with_another_key,
    "expired (beyond the 60 s leeway)": lambda p: signed_by_the_provider(p, exp=int(time.time()) - 120),
    "not yet valid (nbf beyond the leeway)": lambda p: signed_by_the_provider(p, nbf=int(time.time()) + 600),
    "wrong audience": lambda p: signed_by_the_provider(p, aud="https://another-api.example"),
    "wrong issuer": lambda p: signed_by_the_provider(p, iss="http://127.0.0.1:1/not-the-issuer"),
    "no subject": lambda p: signed_by_the_provider(p, sub=None),
    "alg none": unsigned,
    "HS256 keyed with the public key": hs256_with_the_public_key,
    "not a JWT at all": lambda p: "a.b.c",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_a_bad_token_is_401_invalid_token(http, identity_provider, kind):
    assert http.get("/api/imports", headers=bearer(signed_by_the_provider(identity_provider))).status_code == 200
    response = http.get("/api/imports", headers=bearer(BAD_TOKENS[kind](identity_provider)))
    assert response.status_code == 401, kind
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="therapist_service", error="invalid_token"'
    assert response.mimetype == "application/problem+json"


def test_tokens_within_the_leeway_pass(http, identity_provider):
    late = signed_by_the_provider(identity_provider, exp=int(time.time()) - 20)
    early = signed_by_the_provider(identity_provider, nbf=int(time.time()) + 20)
    assert http.get("/api/imports", headers=bearer(late)).status_code == 200
    assert http.get("/api/imports", headers=bearer(early)).status_code == 200


def test_the_provider_rotates_its_keys_without_a_restart_of_ours(oidc_app, make_app, tmp_path, dashboard_port,
                                                                 monkeypatch):
    monkeypatch.setattr(oidc, "KEY_REFRESH_COOLDOWN_SECONDS", 2.0)  # SPEC's 30 s would make this test wait
    provider = start_provider(tmp_path, dashboard_port)
    try:
        http = make_app("therapist", API_TOKENS={}, OIDC_ISSUER=provider.issuer, OIDC_AUDIENCE=AUDIENCE).test_client()
        before = provider.client_credentials_token("imports-reader", "imports:read")
        assert http.get("/api/imports", headers=bearer(before)).status_code == 200
        old_kid = provider.kid
        provider.rotate_keys()
        after = provider.client_credentials_token("imports-reader", "imports:read")
        assert jwt.get_unverified_header(after)["kid"] not in (None, old_kid)
        wait_until(lambda: http.get("/api/imports", headers=bearer(after)).status_code == 200, timeout=10,
                   what="the new key fetched after the cooldown")
        assert http.get("/api/imports", headers=bearer(before)).status_code == 401  # its key is gone
    finally:
        provider.stop()


def test_unknown_key_ids_refetch_the_keys_at_most_once_per_cooldown(http, identity_provider, monkeypatch):
    fetches = []
    real_fetch = jwt.PyJWKClient.fetch_data

    def counted(self):
        fetches.append(time.monotonic())
        return real_fetch(self)

    monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", counted)
    assert http.get("/api/imports", headers=bearer(signed_by_the_provider(identity_provider))).status_code == 200
    for _ in range(20):
        unknown = jwt.encode(claims(identity_provider), identity_provider.key, algorithm="RS256",
                             headers={"kid": uuid.uuid4().hex})
        assert http.get("/api/imports", headers=bearer(unknown)).status_code == 401
    assert len(fetches) == 1  # the first fetch starts the 30 s cooldown: no refetch for the 20 unknown ids


def test_when_the_provider_cannot_be_reached_jwt_requests_are_503_and_ready_warns(make_app, clients):
    down = f"http://127.0.0.1:{free_port()}"
    app = make_app("therapist", API_TOKENS={}, OIDC_ISSUER=down, OIDC_AUDIENCE=AUDIENCE,
                   AUTH_CLIENTS_FILE=str(clients.path))
    http = app.test_client()
    token = jwt.encode({"iss": down, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}, rsa_key(),
                       algorithm="RS256", headers={"kid": "k1"})
    response = http.get("/api/imports", headers=bearer(token))
    assert response.status_code == 503 and "identity provider" in response.get_json()["detail"]
    ready = http.get("/ready").get_json()
    assert ready["status"] == "ready"
    assert any(w["check"] == "oidc" and down in w["detail"] for w in ready["warnings"])
    assert http.get("/api/imports", headers=clients.auth("only-imports-read")).status_code == 200
