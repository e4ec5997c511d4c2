"""HTTP conventions both services follow (SPEC §5): blueprint with our pagination header,
version-based ETags and `If-Match`, the JSON-body guard, the acting token's name, and an OpenAPI
document that tells the truth about error bodies (problem details) and `X-Pagination`."""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from http import HTTPStatus
from typing import Any, TypeVar

import msgspec
from apispec import BasePlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api as SmorestApi
from flask_smorest import Blueprint as SmorestBlueprint
from flask_smorest import abort
from marshmallow import INCLUDE, Schema, fields, validate
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import BadRequest

from shared.auth import Principal, declare_scopes
from shared.db import page_count
from shared.errors import PROBLEM_MIMETYPE
from shared.schemas import RulesPlugin

MAX_SQL_OFFSET = 2**63 - 1  # OFFSET is a bigint
# The id is a number, or a UUID (appointments).
_ETAG_RE = re.compile(r'^(?:W/)?"(?P<id>\d+|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})\.(?P<version>\d+)"$')
# A view function (or MethodView method): what the blueprint's decorators take and give back.
View = TypeVar("View", bound=Callable[..., object])


class ProblemErrorSchema(Schema):
    class Meta:
        unknown = INCLUDE  # e.g. a batch item's `index` and `type`

    pointer = fields.String(metadata={"description": "JSON pointer to the field in the request body"})
    parameter = fields.String(metadata={"description": "the query parameter, when not the body"})
    detail = fields.String()


class ProblemSchema(Schema):
    """RFC 9457 problem details as `shared.errors` writes them. Documents responses; loads nothing."""

    class Meta:
        unknown = INCLUDE  # a problem type may add members

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    errors = fields.List(fields.Nested(ProblemErrorSchema), metadata={"description": "validation errors"})
    existing_id = fields.Integer(allow_none=True, metadata={"description": "duplicate: the record that exists"})


class PaginationSchema(Schema):
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    page_size = fields.Integer(required=True)
    total_pages = fields.Integer(required=True)


def schema_name(schema: type[Schema] | Schema | str) -> str:
    """`PatientSchema` → `Patient`; its partial form (a PATCH body) → `PatientPatch`."""
    resolved = resolve_schema_cls(schema)
    schema_class = resolved[0] if isinstance(resolved, list) else resolved  # a list only for a union of schemas
    name = schema_class.__name__.removesuffix("Schema")
    return f"{name}Patch" if getattr(schema, "partial", False) else name


AUTH_PROBLEMS = {401: "No credential, or one that is not valid (`WWW-Authenticate` says which)",
                 403: "The credential does not hold the scope this operation needs (type `insufficient-scope`, "
                      "with `required_scope`)"}


class SecurityPlugin(BasePlugin):
    """Each operation's `security` from the scopes its view declares (`Blueprint.scope`, which
    writes them as `x-required-scopes`): `[{"oidc": [scope]}, {"bearer": []}]`. OpenAPI 3.0 lets only
    `oauth2` and `openIdConnect` schemes list scopes, so for static bearer tokens
    `x-required-scopes` says it. Without `OIDC_ISSUER` there is no `oidc` scheme to name."""

    def __init__(self, oidc: bool):
        super().__init__()
        self.oidc = oidc

    def operation_helper(self, path: str | None = None, operations: dict[str, dict[str, Any]] | None = None,
                         **kwargs: Any) -> None:
        for operation in (operations or {}).values():
            scopes = operation.get("x-required-scopes")
            if scopes:
                operation["security"] = ([{"oidc": list(scopes)}] if self.oidc else []) + [{"bearer": []}]


class Api(SmorestApi):
    """flask-smorest's Api, documenting error responses as the problem details our handlers send
    (not flask-smorest's own error shape) and `X-Pagination` as the JSON our blueprint writes."""

    ERROR_SCHEMA = ProblemSchema

    def __init__(self, app: Flask | None = None, **kwargs: Any):
        spec_kwargs = kwargs.setdefault("spec_kwargs", {})
        spec_kwargs.setdefault("marshmallow_plugin", RulesPlugin(schema_name_resolver=schema_name))
        super().__init__(app, **kwargs)

    def _register_responses(self) -> None:
        problem = {PROBLEM_MIMETYPE: {"schema": self.ERROR_SCHEMA}}
        for status in HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["content"] = dict(problem)
            self.spec.components.response(status.name, response, lazy=True)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME,
                                      {"description": "Default error response", "content": problem},
                                      lazy=True)

    def _register_pagination_header(self) -> None:
        # A JSON value, so `content` rather than `schema` (which would mean comma-separated pairs).
        self.spec.components.header("PAGINATION", {
            "description": "Pagination metadata (JSON)",
            "content": {"application/json": {"schema": PaginationSchema}},
        }, lazy=True)


@cache
def bounded_pages(schema_cls: type[Schema]) -> type[Schema]:
    """flask-smorest's pagination arguments with `page` bounded by the last page PostgreSQL could
    OFFSET to at the largest page size: documented as `maximum`, refused above it (422)."""
    page, page_size = schema_cls._declared_fields["page"], schema_cls._declared_fields["page_size"]
    largest_page_size = max(v.max for v in page_size.validators if isinstance(v, validate.Range))
    last_page = MAX_SQL_OFFSET // largest_page_size + 1
    bounded_page = fields.Integer(load_default=page.load_default, validate=validate.Range(
        min=1, max=last_page, error=f"must be between 1 and {last_page}"))
    return type(schema_cls.__name__, (schema_cls,), {"page": bounded_page})


class PaginationParser(FlaskParser):
    """Parses pagination arguments with `page` bounded (see `bounded_pages`)."""

    # Narrower than webargs' `argmap`: flask-smorest hands this parser its pagination schema class only.
    def parse(self, argmap: type[Schema], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().parse(bounded_pages(argmap), *args, **kwargs)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, bodies read by msgspec: the values `json.loads` gives, about three times faster
    (a 1,000-patient batch body: 30 ms → 9 ms). What msgspec refuses goes to `json.loads` as
    before, which reads what it reads (NaN, unpaired surrogates: the schemas refuse them) and
    raises its error for the rest. Fields are written in schema order, as documented."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return msgspec.json.decode(s)
        except (msgspec.DecodeError, RecursionError):
            # Strict UTF-8, as webargs read bodies: `json.loads` on bytes would also take UTF-16,
            # a byte-order mark and encoded surrogates. A UnicodeDecodeError is a ValueError: 400.
            return super().loads(s.decode("utf-8") if isinstance(s, bytes) else s, **kwargs)


class BodyParser(FlaskParser):
    """webargs' parser, taking the JSON body Flask parsed already: `require_json_body` parses every
    write's body (to answer 400 for one that is not JSON) and Flask keeps it. webargs would parse
    it a second time."""

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req) or not req.get_data(cache=True):
            return core.missing  # no body: a schema names the fields it requires (422)
        return req.get_json(cache=True)


class Blueprint(SmorestBlueprint):
    """flask-smorest blueprint whose `X-Pagination` is exactly `{total, page, page_size, total_pages}`."""

    ARGUMENTS_PARSER = BodyParser()
    PAGINATION_ARGUMENTS_PARSER = PaginationParser()

    def arguments(self, schema: Any, *args: Any, **kwargs: Any) -> Callable[[View], View]:
        """flask-smorest's `arguments`, with one schema instance for every request: given a class,
        webargs builds an instance per request, deep-copying its fields (a tenth of a small
        write's time, bench/api_write.py). Loading with a shared instance is safe: marshmallow
        keeps a load's state in the call, and our schemas keep none on themselves."""
        return super().arguments(schema() if isinstance(schema, type) else schema, *args, **kwargs)

    # flask-smorest's documentation-only decorators (`alt_response`, `doc`) wrap the view in a
    # function that only calls it (through `current_app.ensure_sync`), to hang the documentation on
    # the wrapper: a POST /api/appointments went through eight such calls, 16 µs. Ours hang the same
    # documentation on the view itself. Each view function here is decorated in one chain only.
    def alt_response(self, *args: Any, **kwargs: Any) -> Callable[[View], View]:
        return _on_the_view(super().alt_response(*args, **kwargs))

    @staticmethod
    def doc(**kwargs: Any) -> Callable[[View], View]:
        return _on_the_view(SmorestBlueprint.doc(**kwargs))

    def paginate(self, *args: Any, **kwargs: Any) -> Callable[[View], View]:
        """flask-smorest's `paginate`, documenting the bounded `page` the parser enforces."""
        paginate = super().paginate(*args, **kwargs)

        def decorator(view: View) -> View:
            wrapper = paginate(view)
            parameters = wrapper._apidoc["pagination"]["parameters"]
            parameters["schema"] = bounded_pages(parameters["schema"])
            return wrapper
        return decorator

    @staticmethod
    def _make_pagination_metadata(page: int, page_size: int, item_count: int) -> dict[str, int]:
        return {"total": item_count, "page": page, "page_size": page_size,
                "total_pages": page_count(item_count, page_size)}

    def scope(self, *scopes: str) -> Callable[[View], View]:
        """The scope a view needs (SPEC §11); several: any one of them. The guard of `shared.auth`
        refuses a credential without it (403) before the view runs; the OpenAPI operation names it
        and documents 401 and 403."""
        def decorator(view: View) -> View:
            declare_scopes(view, scopes)
            view = self.doc(**{"x-required-scopes": list(scopes)})(view)
            return self.problems(401, 403, descriptions=AUTH_PROBLEMS)(view)
        return decorator

    def problems(self, *statuses: int, descriptions: dict[int, str] | None = None,
                 examples: dict[int, dict[str, object]] | None = None) -> Callable[[View], View]:
        """Document the problem-details responses a view can give besides its success."""
        def decorator(view: View) -> View:
            for status in statuses:
                description = (descriptions or {}).get(status, HTTPStatus(status).phrase)
                example = (examples or {}).get(status)
                view = self.alt_response(status, schema=ProblemSchema, content_type=PROBLEM_MIMETYPE,
                                         description=description,
                                         **({"example": example} if example else {}))(view)
            return view
        return decorator


def _on_the_view(document: Callable[[View], View]) -> Callable[[View], View]:
    """A documentation-only decorator of flask-smorest, applied without its call-through wrapper."""
    def decorator(view: View) -> View:
        view._apidoc = document(view)._apidoc  # type: ignore[attr-defined]
        return view
    return decorator


def etag_for(record_id: int | str | uuid.UUID, version: int) -> str:
    return f'"{record_id}.{version}"'


def expected_versions(record_id: int | str | uuid.UUID) -> frozenset[int] | None:
    """The versions an `If-Match` header accepts (any one will do); None when there is no
    condition (or `*`). A tag that is not one of ours never matches: 412, like any other mismatch."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    versions = set()
    for candidate in header.split(","):
        match = _ETAG_RE.match(candidate.strip())
        if match and match["id"].lower() == str(record_id):
            versions.add(int(match["version"]))
    return frozenset(versions)


def current_actor() -> str:
    """The name of the credential that authenticated this request (set by `shared.auth`)."""
    return g.actor


def current_principal() -> Principal:
    """Who this request acts as: name, scopes, organisation (set by `shared.auth`)."""
    return g.principal


def require_json_body() -> None:
    """400 for a write whose body is not JSON (webargs would otherwise load `{}` and say 422).
    Not for a request routing refuses: a method the path does not have is 405 with `Allow`, an
    unknown path 404, whatever its body."""
    if request.method not in ("POST", "PUT", "PATCH") or not request.path.startswith("/api/"):
        return
    if request.routing_exception is not None:
        return
    if not request.get_data(cache=True):
        if request.method in ("PUT", "PATCH"):  # their body is required, as documented
            abort(400, message="the request body is required (JSON)")
        return  # no body at all: /api/imports/run needs none; a schema reports missing fields
    if not request.is_json:
        abort(400, message="the request body must be JSON (Content-Type: application/json)")
    try:
        request.get_json()  # not `silent`: its None would also stand for a body of JSON `null` (422)
    except BadRequest:
        abort(400, message="the request body is not valid JSON")


def json_answer(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer of plain values, made here rather than by flask-smorest (which dumps a view's
    result through its response schema, then through Flask's JSON provider): for a view that
    builds exactly what its documented schema says — a record's `representation`, which tests
    hold equal to its schema's dump, or the appointment write's small answer. Members keep their
    order, as Flask's provider here does (`sort_keys = False`)."""
    return Response(msgspec.json.encode(body), status, headers, mimetype="application/json")


def as_stored(representation: Mapping[str, Any]) -> Response:
    """A stored representation (a version row's `data`), sent as it was serialised then."""
    response = jsonify(representation)
    response.headers["ETag"] = etag_for(representation["id"], representation["version"])
    return response
