"""Domain exceptions raised by service functions, and their one translation to problem details.

Services raise these; `register_error_handlers` turns them (and every HTTP error) into
RFC 9457 `application/problem+json`. The importers turn the same exceptions into per-item errors.
"""
from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, json
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from shared.logs import describe_exception

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"

# SPEC §5: the two routes whose wire format is an upstream specification's (`POST /api/appointments`,
# `POST /api/appointments/participants`) answer 400 for a body that fails validation, as those
# specifications say; every other route 422. Same problem body, same pointers.
UPSTREAM_VALIDATION_STATUS = 400


class DomainError(Exception):
    status = 400
    type = "about:blank"
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(DomainError):
    status, type, title = 404, "not-found", "Not found"


class Gone(DomainError):
    status, type, title = 410, "gone", "Deleted"


class Duplicate(DomainError):
    status, type, title = 409, "duplicate", "Duplicate"

    def __init__(self, detail: str, existing_id: int | None):
        super().__init__(detail, existing_id=existing_id)
        self.existing_id = existing_id


class StaleUpdate(DomainError):
    status, type, title = 409, "stale-update", "Stale update"


class PreconditionFailed(DomainError):
    status, type, title = 412, "precondition-failed", "Precondition failed"


class Conflict(DomainError):
    status, type, title = 409, "conflict", "Conflict"


class Overlap(DomainError):
    """The time is taken: `conflicting_id` names the appointment holding it (None if gone since)."""

    status, type, title = 409, "overlap", "Overlap"

    def __init__(self, detail: str, conflicting_id: str | None):
        super().__init__(detail, conflicting_id=conflicting_id)
        self.conflicting_id = conflicting_id


class WrongOrganisation(DomainError):
    """A credential bound to one organisation named another (SPEC §11)."""

    status, type, title = 403, "wrong-organisation", "Wrong organisation"


class InvalidData(DomainError):
    """Validation failed below the schema (or a schema error re-raised by a service)."""

    status, type, title = 422, "validation-error", "Invalid data"

    def __init__(self, detail: str, errors: list[dict[str, str]], *, status: int | None = None):
        super().__init__(detail, errors=errors)
        self.errors = errors
        if status is not None:  # 400 on the routes whose upstream specification says so (SPEC §5)
            self.status = status


def escape_pointer_token(token: object) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def flatten_messages(messages: object, prefix: str = "") -> list[dict[str, str]]:
    """marshmallow's nested error messages → `[{"pointer": "/a/0/b", "detail": "..."}]`."""
    errors: list[dict[str, str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":
                errors.extend(flatten_messages(value, prefix))
            else:
                errors.extend(flatten_messages(value, f"{prefix}/{escape_pointer_token(key)}"))
    elif isinstance(messages, (list, tuple)):
        if all(isinstance(m, str) for m in messages):
            errors.extend({"pointer": prefix or "/", "detail": m} for m in messages)
        else:
            for item in messages:
                errors.extend(flatten_messages(item, prefix))
    else:
        errors.append({"pointer": prefix or "/", "detail": str(messages)})
    return errors


def problem_body(status: int, title: str, detail: str | None = None, *, type: str = "about:blank",
                 **extra: Any) -> dict[str, Any]:
    """The one shape of a problem-details document (also stored, e.g. a batch's 422 for replays)."""
    body: dict[str, Any] = {"type": type, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return body


def problem(status: int, title: str, detail: str | None = None, *, type: str = "about:blank",
            headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
    body = problem_body(status, title, detail, type=type, **extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in dict(headers or {}).items():
        response.headers[name] = value
    return response


def _webargs_errors(data: dict[str, Any]) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for location, messages in (data.get("messages") or {}).items():
        for error in flatten_messages(messages):
            if location in ("json", "form", "files"):
                errors.append(error)
            else:  # query, headers: name the parameter rather than a body pointer
                errors.append({"parameter": error["pointer"].lstrip("/"), "detail": error["detail"]})
    return errors


def http_exception_to_problem(error: HTTPException) -> Response:
    data = getattr(error, "data", None) or {}
    headers = dict(data.get("headers") or {})
    if error.code == 401:
        headers.setdefault("WWW-Authenticate", f'Bearer realm="{current_app.config.get("SERVICE_NAME", "api")}"')
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    if error.code in (400, 422) and "messages" in data:  # 400 on the upstream-format routes (SPEC §5)
        errors = _webargs_errors(data)
        fields = ", ".join(e.get("pointer") or e.get("parameter", "") for e in errors)
        return problem(error.code, "Invalid data", f"validation failed for {fields}" if fields else None,
                       type="validation-error", errors=errors, headers=headers)
    detail = data.get("message") or error.description
    extra = {k: v for k, v in data.items() if k not in ("message", "headers", "messages", "schema", "exc")}
    return problem(error.code or 500, error.name, detail, headers=headers, **extra)


def domain_error_to_problem(error: DomainError) -> Response:
    return problem(error.status, error.title, error.detail, type=error.type, **error.extra)


def unexpected_error_to_problem(error: Exception) -> Response:
    # The exception's text can hold row values (PostgreSQL's DETAIL, even with hidden parameters):
    # log its class and the frames it passed through, never its message.
    log.error("unhandled %s in request", describe_exception(error))
    log.debug("unhandled %s, raised through:\n%s", type(error).__name__,
              "".join(traceback.format_tb(error.__traceback__)))
    return problem(500, "Internal server error", "the error was logged; please retry or contact support")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(DomainError, domain_error_to_problem)
    app.register_error_handler(HTTPException, http_exception_to_problem)
    app.register_error_handler(Exception, unexpected_error_to_problem)
