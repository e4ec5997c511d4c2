"""Signing in to the dashboard at the identity provider (SPEC §11), in Chromium: the login page
offers the provider, the authorization code flow with PKCE runs through the provider's own login
page, and the person's scopes from the access token decide what the dashboard allows."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import serving

from .conftest import AUDIENCE, DASHBOARD_CLIENT


@pytest.fixture
def served(make_app, identity_provider, dashboard_port):
    """The therapist service with the dashboard's provider sign-in, on the port whose callback the
    provider knows."""
    app = make_app("therapist", API_TOKENS={}, OIDC_ISSUER=identity_provider.issuer, OIDC_AUDIENCE=AUDIENCE,
                   OIDC_CLIENT_ID=DASHBOARD_CLIENT)
    with serving(app, dashboard_port) as url:
        yield url


def sign_in_at_the_provider(browser, served: str, login: str):
    page = browser.new_context().new_page()
    requests_seen: list[str] = []
    page.on("request", lambda request: requests_seen.append(request.url))
    page.goto(f"{served}/imports")
    assert "/imports/login" in page.url
    page.click("#provider-sign-in")
    page.wait_for_selector("input[name=login]")  # the provider's own login page
    assert not page.url.startswith(served)  # the provider's page, not ours
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password: the provider's development login")
    page.click("button[type=submit]")
    page.wait_for_url(f"{served}/imports**")
    page.wait_for_load_state()
    authorize = next(url for url in requests_seen if "/auth?" in url)
    return page, parse_qs(urlsplit(authorize).query)


def test_on_call_signs_in_at_the_provider_and_may_press_the_buttons(browser, served):
    page, authorize = sign_in_at_the_provider(browser, served, "oncall")
    assert authorize["code_challenge_method"] == ["S256"] and authorize["code_challenge"]  # PKCE
    assert authorize["client_id"] == [DASHBOARD_CLIENT]
    assert page.url == f"{served}/imports"  # from the callback, on to the page first asked for
    assert "signed in as" in page.content() and "oidc:oncall" in page.content()
    assert page.locator("button:has-text('Run now')").get_attribute("title") != "Needs the scope imports:operate"
    cookie = next(c for c in page.context.cookies() if c["name"] == "therapist_service_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/imports"


def test_a_viewer_signs_in_but_the_buttons_are_disabled(browser, served):
    page, _ = sign_in_at_the_provider(browser, served, "viewer")
    assert "oidc:viewer" in page.content()
    run_now = page.locator("button:has-text('Run now')")
    assert run_now.is_disabled() and run_now.get_attribute("title") == "Needs the scope imports:operate"


def test_a_person_without_imports_read_is_not_signed_in(browser, served):
    page = browser.new_context().new_page()
    page.goto(f"{served}/imports/login")
    page.click("#provider-sign-in")
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", "stranger")  # an account the provider grants no scope of ours
    page.fill("input[name=password]", "x")
    page.click("button[type=submit]")
    page.wait_for_url(f"{served}/imports/login/callback**")
    assert "does not hold the scope imports:read" in page.content()
    page.goto(f"{served}/imports")
    assert "/imports/login" in page.url
