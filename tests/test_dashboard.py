"""The import dashboard at /imports: sign-in with an API token, CSRF on every button, what the
pages show, and a real browser (Debian's chromium through Playwright) against a real import run."""
from __future__ import annotations

import base64
import json
import re
import shutil
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import AUTH, DASHBOARD_SECRET_KEY, OTHER_TOKEN, ROOT, SAMPLES, TOKEN
from helpers import add_record, serving

SCREENSHOT = ROOT / "var" / "dashboard.png"
BROKEN = b'{"metadata": {"scrape_id": "10XXX"}, "therapists": [ {"id": '  # cut off mid-file


# ---- helpers ------------------------------------------------------------------------------------

def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client, token: str = TOKEN):
    page = client.get("/imports/login")
    return client.post("/imports/login", data={"token": token, "csrf_token": csrf_of(page.text)})


def session_payload(set_cookie: str) -> dict[str, Any]:
    """What Flask's signed cookie carries (readable by anyone: it is signed, not encrypted)."""
    value = set_cookie.split(";", 1)[0].split("=", 1)[1]
    compressed = value.startswith(".")
    data = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)


def record_state(app, import_id: int) -> tuple[str, int]:
    from shared.extensions import db

    with app.app_context():
        record = db.session.get(app.extensions["imports"].models.record, import_id)
        return record.status, record.attempts


@pytest.fixture
def inbox(tmp_path) -> Path:
    folder = tmp_path / "therapist-inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def app(make_app, inbox):
    return make_app("therapist", THERAPIST_IMPORT_DIR=str(inbox), THERAPIST_IMPORT_SETTLE_SECONDS=0)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 302
    return client


# ---- sign-in, cookie, CSRF ---------------------------------------------------------------------

def test_unauthenticated_dashboard_redirects_to_login(client):
    for path in ("/imports", "/imports/1", "/imports?status=failed"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/imports/login?next=")


def test_unauthenticated_post_is_refused(client, app):
    page = client.get("/imports/login")  # a CSRF token, but nobody signed in
    response = client.post("/imports/run", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 401
    with app.app_context():
        assert app.extensions["imports"].models.state.query.first() is None


def test_wrong_token_is_refused(client):
    response = sign_in(client, token="not-a-token-0123456789")
    assert response.status_code == 401
    assert "Not signed in: that token is not valid." in response.text
    assert client.get("/imports").status_code == 302


def test_right_token_signs_in_and_the_cookie_keeps_only_its_name_and_scopes(client):
    response = sign_in(client)
    assert response.status_code == 302 and response.headers["Location"] == "/imports"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("therapist_service_dashboard=")
    # Lax, not Strict: the identity provider's redirect back must carry the sign-in's state (SPEC §11)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/imports" in cookie
    assert "Secure" not in cookie  # plain http on loopback: a browser would drop a Secure cookie
    payload = session_payload(cookie)
    assert payload["dashboard_user"] == "tests"
    assert "imports:operate" in payload["dashboard_scopes"]  # an API_TOKENS token holds every scope
    assert TOKEN not in json.dumps(payload)
    page = client.get("/imports")
    assert page.status_code == 200 and "signed in as <strong>tests</strong>" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_cookie_is_secure_unless_plain_http_on_loopback(client):
    for base_url, headers in (("https://localhost", {}), ("http://imports.example.org", {}),
                              ("http://localhost", {"X-Forwarded-Proto": "https"})):
        page = client.get("/imports/login", base_url=base_url, headers=headers)
        response = client.post("/imports/login", base_url=base_url, headers=headers,
                               data={"token": TOKEN, "csrf_token": csrf_of(page.text)})
        assert "Secure" in response.headers["Set-Cookie"], base_url


def test_login_redirects_only_within_the_dashboard(app):
    page = app.test_client().get("/imports/login?next=/imports/7")
    assert 'name="next" value="/imports/7"' in page.text
    for target, expected in (("/imports/7", "/imports/7"), ("https://evil.example/imports", "/imports"),
                             ("//evil.example/imports", "/imports"), ("/api/patients", "/imports")):
        client = app.test_client()
        page = client.get("/imports/login")
        response = client.post("/imports/login", data={"token": TOKEN, "next": target,
                                                       "csrf_token": csrf_of(page.text)})
        assert response.headers["Location"] == expected, target


@pytest.mark.parametrize("form", [{}, {"csrf_token": "forged"}])
def test_post_without_the_sessions_csrf_token_is_refused(signed_in, app, form):
    import_id = add_record(app, status="failed", errors=[{"index": None, "ref": None, "pointer": "/",
                                                          "detail": "bad", "kind": "not-json"}])
    for path in ("/imports/run", f"/imports/{import_id}/retry", "/imports/logout"):
        response = signed_in.post(path, data=form)
        assert response.status_code == 400, path
        assert "CSRF" in response.text
    assert record_state(app, import_id) == ("failed", 1)
    with app.app_context():
        assert app.extensions["imports"].models.state.query.first() is None
    assert signed_in.get("/imports").status_code == 200  # still signed in


def test_sign_out_ends_the_session(signed_in):
    page = signed_in.get("/imports")
    response = signed_in.post("/imports/logout", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 302
    assert signed_in.get("/imports").status_code == 302


def test_session_is_signed_with_its_own_key_so_rotating_a_token_signs_nobody_out(make_app, inbox):
    first = make_app("therapist")
    assert first.secret_key == DASHBOARD_SECRET_KEY
    client = first.test_client()
    assert sign_in(client).status_code == 302
    cookie = client.get_cookie("therapist_service_dashboard", path="/imports")

    def signed_in_with_cookie(app, name=cookie.key) -> bool:
        browser = app.test_client()
        browser.set_cookie(name, cookie.value, path="/imports")
        return browser.get("/imports").status_code == 200

    assert signed_in_with_cookie(make_app("therapist"))  # another worker with the same key agrees
    rotated = make_app("therapist", API_TOKENS=f"tests:rotated-token-0123456789,other:{OTHER_TOKEN}")
    assert signed_in_with_cookie(rotated)  # rotating a token signs nobody out
    assert not signed_in_with_cookie(make_app("therapist", DASHBOARD_SECRET_KEY="another-key-" + "0" * 30))
    # the same key, the other service: its cookie is signed for its own service only
    assert not signed_in_with_cookie(make_app("patient"), name="patient_service_dashboard")


def test_without_a_dashboard_key_the_dashboard_is_off_and_the_api_serves(make_app, inbox):
    app = make_app("therapist", DASHBOARD_SECRET_KEY=None)
    client = app.test_client()
    response = client.get("/imports/login")
    assert response.status_code == 503 and "DASHBOARD_SECRET_KEY" in response.text
    assert client.get("/api/imports", headers=AUTH).status_code == 200


# ---- what the pages show -------------------------------------------------------------------------

def test_list_shows_status_counts_duration_errors_and_filters(signed_in, app):
    now = datetime.now(UTC)
    ok = add_record(app, name="52074.json", label="52074.json", warnings=[
        {"index": 1, "ref": "x", "pointer": "/", "detail": "w", "kind": "changed-unchanged"}])
    failed = add_record(app, name="10115.json", label="10115.json", status="failed", attempts=3,
                        started_at=now, finished_at=now + timedelta(seconds=75),
                        next_attempt_at=now + timedelta(hours=2), errors=[
                            {"index": i, "ref": f"p{i}", "pointer": f"/therapists/{i}/id", "detail": "d",
                             "kind": "validation" if i else "duplicate"} for i in range(3)])
    page = signed_in.get("/imports").text
    assert "52074.json" in page and "10115.json" in page
    assert 'class="badge st-succeeded"' in page and 'class="badge st-failed"' in page
    assert "1 min 15 s" in page and "2.00 s" in page
    assert "validation ×2" in page and "duplicate" in page and "(3 in all)" in page
    assert "1 warning" in page and "in 1 h 59 min" in page
    assert f'action="/imports/{failed}/retry"' in page and f'action="/imports/{ok}/retry"' not in page

    only_failed = signed_in.get("/imports?status=failed").text
    assert "10115.json" in only_failed and "52074.json" not in only_failed
    assert signed_in.get("/imports?status=nonsense").status_code == 400


def test_list_is_paginated_newest_first(signed_in, app):
    for n in range(30):
        add_record(app, name=f"{n:05d}.json", label=f"{n:05d}.json")
    first = signed_in.get("/imports").text
    assert "00029.json" in first and "00005.json" in first and "00004.json" not in first
    assert "page 1 of 2 · 30 imports" in first
    second = signed_in.get("/imports?page=2").text
    assert "00004.json" in second and "00005.json" not in second


def test_detail_page_lists_every_error_and_warning(signed_in, app):
    import_id = add_record(app, status="partial", errors=[
        {"index": 4, "ref": "praxis9", "pointer": "/therapists/4/contact/email", "detail": "Not a valid email address.",
         "kind": "validation"}], warnings=[
        {"index": None, "ref": None, "pointer": "/metadata/total_therapists", "detail": "says 5, the list has 4",
         "kind": "count-mismatch"}])
    page = signed_in.get(f"/imports/{import_id}").text
    for expected in ("praxis9", "/therapists/4/contact/email", "Not a valid email address.",
                     "/metadata/total_therapists", "says 5, the list has 4", "count-mismatch"):
        assert expected in page
    assert "Retry" not in page  # partial imports are done: nothing to retry
    missing = signed_in.get("/imports/999999")
    assert missing.status_code == 404 and "does not exist" in missing.text
    assert missing.mimetype == "text/html"


def test_detail_page_pages_the_errors_of_a_big_file(signed_in, app):
    import_id = add_record(app, status="failed", errors=[
        {"index": i, "ref": f"ref-{i:04d}", "pointer": f"/therapists/{i}/id", "detail": "d", "kind": "validation"}
        for i in range(250)])

    first = signed_in.get(f"/imports/{import_id}").text
    assert "ref-0000" in first and "ref-0099" in first and "ref-0100" not in first
    assert "errors 1–100 of 250 · page 1 of 3" in first
    assert f'href="/imports/{import_id}?page=2"' in first
    last = signed_in.get(f"/imports/{import_id}?page=3").text
    assert "ref-0200" in last and "ref-0249" in last and "ref-0199" not in last
    assert "errors 201–250 of 250 · page 3 of 3" in last
    beyond = signed_in.get(f"/imports/{import_id}?page=9")
    assert beyond.status_code == 200 and "No errors on this page." in beyond.text


def test_patient_dashboard_shows_the_label_never_the_file_name(make_app):
    app = make_app("patient")
    client = app.test_client()
    assert sign_in(client).status_code == 302
    import_id = add_record(app, source="gcs", name="Mustermann_Erika_19850312_tok-123.json",
                           label="registration tok-123", status="failed", generation=7,
                           errors=[{"index": 0, "ref": "tok-123", "pointer": "/patient_data/email",
                                    "detail": "Not a valid email address.", "kind": "validation"}])
    for path in ("/imports", f"/imports/{import_id}"):
        page = client.get(path).text
        assert "registration tok-123" in page
        assert "Mustermann" not in page and "Erika" not in page and "19850312" not in page


def test_imports_per_day_groups_the_last_14_days_by_status(app):
    from shared.dashboard.chart import stacked_bars
    from shared.imports.dashboard import imports_per_day

    today = datetime.now(UTC).date()

    def at(days_ago: int) -> datetime:
        return datetime.combine(today - timedelta(days=days_ago), datetime.min.time(),
                                tzinfo=UTC) + timedelta(hours=12)

    for days_ago, status in ((0, "succeeded"), (0, "succeeded"), (0, "failed"), (3, "partial"),
                             (13, "quarantined"), (14, "succeeded"), (30, "failed")):
        add_record(app, status=status, created_at=at(days_ago))
    with app.app_context():
        days = imports_per_day(app.extensions["imports"].models.record, days=14, today=today)
    assert len(days) == 14 and days[0].day == today - timedelta(days=13) and days[-1].day == today
    assert days[-1].by_status == {"succeeded": 2, "failed": 1}
    assert days[-4].by_status == {"partial": 1}
    assert days[0].by_status == {"quarantined": 1}
    assert sum(day.total for day in days) == 5  # 14 and 30 days ago are outside the window

    chart = stacked_bars(days)
    today_bars = [s for s in chart.segments if s.day == today.isoformat()]
    assert [s.status for s in today_bars] == ["succeeded", "failed"]  # stacked bottom up
    assert today_bars[0].y + today_bars[0].height == chart.plot_bottom
    assert today_bars[1].y + today_bars[1].height == pytest.approx(today_bars[0].y, abs=0.2)


def test_importer_state_is_shown(signed_in, app):
    from shared.extensions import db

    heartbeat = datetime(2025, 7, 2, 3, 14, 15, tzinfo=UTC)
    with app.app_context():
        State = app.extensions["imports"].models.state
        db.session.add(State(id=1, lock_holder="host-a:4242", lock_heartbeat_at=heartbeat,
                             last_pass_started_at=heartbeat, source_down_since=heartbeat))
        db.session.commit()
    page = signed_in.get("/imports").text
    assert "host-a:4242" in page and "2025-07-02 03:14:15 UTC" in page
    assert "Source down since" in page and "watched folder" in page
    assert "not running in this process" in page


def test_importer_state_of_a_running_worker(make_app, inbox):
    import time

    app = make_app("therapist", IMPORTS_ENABLED=True, THERAPIST_IMPORT_DIR=str(inbox),
                   THERAPIST_IMPORT_SETTLE_SECONDS=0)
    worker = app.extensions["imports"].worker
    deadline = time.monotonic() + 15
    while not (worker.is_leader and worker.imports.source.observer_alive() and worker.last_leader_note):
        assert time.monotonic() < deadline, "the importer did not take the lock"
        time.sleep(0.1)
    client = app.test_client()
    sign_in(client)
    page = client.get("/imports").text
    assert worker.identity in page  # as lock holder and as this process
    assert "holds the lock" in page
    assert re.search(r"Folder observer</dt>\s*<dd><span class=\"good\">alive", page)
    assert re.search(r"Next poll</dt>\s*<dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)


def test_run_now_and_retry_buttons(signed_in, app):
    import_id = add_record(app, status="quarantined", attempts=5)
    page = signed_in.get("/imports")
    response = signed_in.post("/imports/run", data={"csrf_token": csrf_of(page.text), "next": "/imports?status=failed"})
    assert response.status_code == 302 and response.headers["Location"] == "/imports?status=failed"
    with app.app_context():
        assert app.extensions["imports"].models.state.query.one().run_requested_at is not None
    assert "A pass was requested" in signed_in.get("/imports").text

    response = signed_in.post(f"/imports/{import_id}/retry", data={"csrf_token": csrf_of(page.text)})
    assert response.headers["Location"] == f"/imports/{import_id}"
    assert record_state(app, import_id) == ("pending", 0)
    again = signed_in.post(f"/imports/{import_id}/retry", data={"csrf_token": csrf_of(page.text)})
    assert again.status_code == 409 and "only failed or quarantined" in again.text


# ---- a real browser against a real import run ----------------------------------------------------

@pytest.fixture
def served(app):
    """The app on a loopback port, as a browser reaches it."""
    with serving(app) as url:
        yield url


def test_browser_shows_a_real_run_and_retry_requeues_the_failed_import(app, inbox, served, browser):
    shutil.copy(SAMPLES / "therapist-folder" / "52074.json", inbox / "52074.json")
    (inbox / "10115.json").write_bytes(BROKEN)
    with app.app_context():
        summary = app.extensions["imports"].run_pass()
        Record = app.extensions["imports"].models.record
        records = {r.label: (r.id, r.status) for r in Record.query.all()}
    assert summary.files == 2, str(summary)
    good_id, good_status = records["52074.json"]
    failed_id, failed_status = records["10115.json"]
    assert good_status in ("succeeded", "partial") and failed_status == "failed"

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{served}/imports")
    assert "/imports/login" in page.url
    page.fill("#token", TOKEN)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{served}/imports")

    rows = page.locator("table.imports tbody tr")
    assert rows.count() == 2
    good_row = page.locator("tr", has_text="52074.json")
    failed_row = page.locator("tr", has_text="10115.json")
    assert good_row.locator(".badge").inner_text() == good_status
    assert failed_row.locator(".badge").inner_text() == "failed"
    assert page.locator("svg rect.st-failed").count() == 1
    assert page.locator("svg rect.st-" + good_status).count() == 1
    assert "watched folder" in page.locator("section.importer").inner_text()

    failed_row.locator("a.label").click()
    page.wait_for_url(f"{served}/imports/{failed_id}")
    errors = page.locator("table.items").first.inner_text()
    assert "truncated" in errors or "not-json" in errors, errors

    page.click("button:has-text('Retry')")
    page.wait_for_url(f"{served}/imports/{failed_id}")
    assert "re-queued" in page.locator(".flash").inner_text()
    assert page.locator("h1 .badge").inner_text() == "pending"
    assert record_state(app, failed_id) == ("pending", 0)
    with app.app_context():
        assert app.extensions["imports"].models.state.query.one().run_requested_at is not None

    page.goto(f"{served}/imports")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.goto(f"{served}/imports/{good_id}")
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-detail.png")), full_page=True)
