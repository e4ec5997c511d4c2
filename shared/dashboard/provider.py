"""Signing in to the dashboard at the identity provider (SPEC §11), with Authlib's Flask client:
the authorization code flow with PKCE (`S256`), the state and nonce kept in the dashboard's
session cookie between the two redirects, the ID token checked by Authlib.

Who the person is and what they may do come from the *access token*, checked exactly as an API
request's (`shared.auth.oidc`: issuer, audience, keys, `scope`/`scp`, `org_id`), so a person has
the same rights on the dashboard as with the API. With `OIDC_CLIENT_SECRET` the dashboard is a
confidential client; without, a public one (PKCE alone).
"""
from __future__ import annotations

from typing import Any

from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import FlaskOAuth2App, OAuth
from flask import Flask, current_app

from shared.auth import Principal
from shared.auth.oidc import InvalidToken, ProviderUnavailable

NEXT = "dashboard_next"  # the page to return to after the provider's redirect
SCOPE = "openid imports:read imports:operate"  # what the dashboard asks for; the provider grants what it grants


class SignInFailed(Exception):
    """Why the provider's answer did not sign anybody in (shown on the login page; no token)."""


def configure(app: Flask) -> None:
    settings = app.extensions["settings"]
    if not settings.OIDC_CLIENT_ID:
        return
    oauth = OAuth(app)
    client_kwargs: dict[str, Any] = {"scope": SCOPE, "code_challenge_method": "S256"}
    if not settings.OIDC_CLIENT_SECRET:
        client_kwargs["token_endpoint_auth_method"] = "none"
    oauth.register("provider", client_id=settings.OIDC_CLIENT_ID, client_secret=settings.OIDC_CLIENT_SECRET,
                   server_metadata_url=f"{settings.OIDC_ISSUER}/.well-known/openid-configuration",
                   client_kwargs=client_kwargs)
    app.extensions["dashboard_oauth"] = oauth


def client() -> FlaskOAuth2App | None:
    oauth = current_app.extensions.get("dashboard_oauth")
    return oauth.provider if oauth is not None else None


def principal(oauth_client: FlaskOAuth2App) -> Principal:
    """The principal of the provider's answer at the callback, or `SignInFailed`."""
    try:
        token = oauth_client.authorize_access_token()
    except AuthlibBaseError as error:
        raise SignInFailed(f"the identity provider answered {error.error}") from None
    access_token = token.get("access_token") if isinstance(token, dict) else None
    if not access_token:
        raise SignInFailed("the identity provider sent no access token")
    try:
        return current_app.extensions["auth"].oidc.verify(access_token)
    except InvalidToken as error:
        raise SignInFailed(f"the provider's access token is not valid here ({error})") from None
    except ProviderUnavailable:
        raise SignInFailed("the identity provider's keys cannot be fetched; try again") from None
