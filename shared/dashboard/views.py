"""`/imports`: the import dashboard's pages and buttons. Each view reads its arguments, calls one
function of `shared.imports.dashboard`, and renders or redirects."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from shared.auth import Principal
from shared.auth.oidc import InvalidToken, ProviderUnavailable
from shared.dashboard import provider
from shared.dashboard import session as auth
from shared.dashboard.chart import STACK_ORDER, stacked_bars
from shared.errors import DomainError
from shared.imports import dashboard as queries
from shared.imports.models import STATUSES
from shared.imports.service import ImportsExtension

PAGE_SIZE = 25
ERRORS_PAGE_SIZE = 100  # a bad scrape can carry thousands
CHART_DAYS = 14

bp = Blueprint("imports_dashboard", __name__, url_prefix="/imports",
               template_folder="templates", static_folder="static", static_url_path="/static")

OPEN_ENDPOINTS = {"imports_dashboard.login", "imports_dashboard.oidc_login", "imports_dashboard.oidc_callback",
                  "imports_dashboard.static"}
READ, OPERATE = "imports:read", "imports:operate"  # pages, buttons (SPEC §11)


def _imports() -> ImportsExtension:
    return current_app.extensions["imports"]


# ---- sign-in, scopes and CSRF, for every page ---------------------------------------------------

@bp.before_request
def require_sign_in_and_csrf() -> ResponseReturnValue | None:
    if not current_app.config.get("SECRET_KEY"):
        abort(503, description="The dashboard is off: set DASHBOARD_SECRET_KEY (a random value of at least "
                               "32 characters, the same for every worker and replica) to serve it.")
    if request.method == "POST" and not auth.csrf_valid(request.form.get("csrf_token")):
        abort(400, description="The form is out of date or was not sent from this dashboard "
                               "(CSRF token missing or wrong). Reload the page and try again. If "
                               "this repeats, the browser drops the dashboard's cookie: open it "
                               "over https, or over http on localhost.")
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    principal = auth.signed_in()
    if principal is None:
        if request.method == "GET":
            return redirect(url_for(".login", next=request.full_path.rstrip("?")))
        abort(401, description="Sign in first.")
    needed = OPERATE if request.method == "POST" and request.endpoint != "imports_dashboard.logout" else READ
    if request.endpoint != "imports_dashboard.logout" and not principal.holds(needed):
        abort(403, description=f"You are signed in as {principal.name}, whose credential does not hold the "
                               f"scope {needed}.")
    return None


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another site."""
    if target and target.startswith("/imports") and not urlsplit(target).netloc and "\\" not in target:
        return target
    return url_for(".overview")


def _signed_in(principal: Principal, next_page: str | None) -> ResponseReturnValue:
    if not principal.holds(READ):
        flash(f"{principal.name} does not hold the scope {READ}: ask for a credential that may read imports.",
              "error")
        return render_template("imports_dashboard/login.html", next=next_page or ""), 403
    auth.sign_in(principal)
    return redirect(_safe_next(next_page))


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "POST":
        try:
            principal = current_app.extensions["auth"].principal(request.form.get("token", "").strip())
        except (InvalidToken, ProviderUnavailable) as error:
            reason = "the identity provider cannot be reached" if isinstance(error, ProviderUnavailable) \
                else "that token is not valid"
            flash(f"Not signed in: {reason}.", "error")
            return render_template("imports_dashboard/login.html", next=request.form.get("next", "")), 401
        return _signed_in(principal, request.form.get("next"))
    return render_template("imports_dashboard/login.html", next=request.args.get("next", ""))


@bp.get("/login/oidc")
def oidc_login() -> ResponseReturnValue:
    """To the identity provider (authorization code flow with PKCE); it sends the browser back to
    `oidc_callback`."""
    client = provider.client()
    if client is None:
        abort(404, description="Signing in with an identity provider is not configured (OIDC_CLIENT_ID).")
    session[provider.NEXT] = request.args.get("next", "")
    return client.authorize_redirect(url_for(".oidc_callback", _external=True))


@bp.get("/login/callback")
def oidc_callback() -> ResponseReturnValue:
    client = provider.client()
    if client is None:
        abort(404, description="Signing in with an identity provider is not configured (OIDC_CLIENT_ID).")
    next_page = session.get(provider.NEXT)
    try:
        principal = provider.principal(client)
    except provider.SignInFailed as error:
        flash(f"Not signed in: {error}", "error")
        return render_template("imports_dashboard/login.html", next=next_page or ""), 401
    return _signed_in(principal, next_page)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    auth.sign_out()
    flash("Signed out.", "ok")
    return redirect(url_for(".login"))


# ---- pages --------------------------------------------------------------------------------------

@bp.get("")
def overview() -> ResponseReturnValue:
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        abort(400, description=f"status must be one of {', '.join(STATUSES)}")
    page = request.args.get("page", 1, type=int)
    imports = _imports()
    return render_template(
        "imports_dashboard/overview.html",
        page=queries.recent_imports(imports.models.record, status=status, page=max(1, page),
                                    page_size=PAGE_SIZE),
        status=status,
        importer=queries.importer_status(imports),
        chart=stacked_bars(queries.imports_per_day(imports.models.record, days=CHART_DAYS)),
    )


@bp.get("/<int:import_id>")
def detail(import_id: int) -> ResponseReturnValue:
    record = queries.get_import(_imports().models.record, import_id)
    if record is None:
        abort(404, description=f"Import {import_id} does not exist.")
    page = max(1, request.args.get("page", 1, type=int))
    return render_template("imports_dashboard/detail.html", record=record,
                           errors=queries.import_errors(_imports().models.record, import_id, page=page,
                                                        page_size=ERRORS_PAGE_SIZE),
                           duration=queries.duration(record.status, record.started_at, record.finished_at),
                           retryable=record.status in queries.RETRYABLE)


# ---- buttons ------------------------------------------------------------------------------------

@bp.post("/run")
def run_now() -> ResponseReturnValue:
    _imports().request_run()
    flash("A pass was requested: the worker holding the importer lock starts it within a few seconds.", "ok")
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/<int:import_id>/retry")
def retry(import_id: int) -> ResponseReturnValue:
    _imports().retry(import_id)
    flash(f"Import #{import_id} was re-queued with a fresh attempt count; a pass was requested.", "ok")
    return redirect(_safe_next(request.form.get("next")) if request.form.get("next")
                    else url_for(".detail", import_id=import_id))


# ---- errors as pages, not problem details --------------------------------------------------------

@bp.errorhandler(DomainError)
def domain_error(error: DomainError) -> ResponseReturnValue:
    return render_template("imports_dashboard/error.html", status=error.status, title=error.title,
                           detail=error.detail), error.status


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException) -> ResponseReturnValue:
    status = error.code or 500  # never 500 here: Flask passes no handler an exception without a code
    return render_template("imports_dashboard/error.html", status=status, title=error.name,
                           detail=error.description), status


@bp.after_request
def page_headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


# ---- what templates use -------------------------------------------------------------------------

@bp.context_processor
def template_helpers() -> dict[str, object]:
    principal = auth.signed_in()
    return {"csrf_token": auth.csrf_token, "signed_in_as": principal.name if principal else None,
            "can_operate": principal is not None and principal.holds(OPERATE),
            "provider_sign_in": provider.client() is not None,
            "service_title": current_app.config.get("API_TITLE", current_app.name),
            "statuses": STATUSES, "stack_order": STACK_ORDER,
            "when": when, "ago": ago, "due": due, "took": took}


def when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = _span(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def due(moment: datetime | None) -> str:
    """A next attempt: "in 5 min", or "due" once its time has come."""
    if moment is None:
        return "—"
    return "due" if moment <= datetime.now(UTC) else ago(moment)


def took(span: timedelta | None) -> str:
    return "—" if span is None else _span(span.total_seconds(), precise=True)


def _span(seconds: float, precise: bool = False) -> str:
    if seconds < 60:
        return (f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s") if precise else f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
