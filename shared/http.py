"""HTTP conventions both services follow (SPEC §5): blueprint with our pagination header,
version-based ETags and `If-Match`, the JSON-body guard, and the acting token's name."""
from __future__ import annotations

import re
from flask import Response, g, jsonify, request
from flask_smorest import Blueprint as SmorestBlueprint
from flask_smorest import abort

_ETAG_RE = re.compile(r'^(?:W/)?"(?P<id>\d+)\.(?P<version>\d+)"$')


class Blueprint(SmorestBlueprint):
    """flask-smorest blueprint whose `X-Pagination` is exactly `{total, page, page_size, total_pages}`."""

    @staticmethod
    def _make_pagination_metadata(page: int, page_size: int, item_count: int) -> dict[str, int]:
        total_pages = 0 if item_count == 0 else (item_count - 1) // page_size + 1
        return {"total": item_count, "page": page, "page_size": page_size, "total_pages": total_pages}


def etag_for(record_id: int, version: int) -> str:
    return f'"{record_id}.{version}"'


def expected_version(record_id: int) -> int | None:
    """The version an `If-Match` header asks for; None when there is no condition (or `*`).

    A tag that is not one of ours can never match: 412, like any other mismatch.
    """
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    for candidate in header.split(","):
        match = _ETAG_RE.match(candidate.strip())
        if match and int(match["id"]) == record_id:
            return int(match["version"])
    return -1


def current_actor() -> str:
    """The name of the token that authenticated this request (set by `shared.auth`)."""
    return g.actor


def require_json_body() -> None:
    """400 for a write whose body is not JSON (webargs would otherwise load `{}` and say 422)."""
    if request.method not in ("POST", "PUT", "PATCH") or not request.path.startswith("/api/"):
        return
    if request.content_length == 0 and not request.get_data(cache=True):
        return  # bodiless POSTs such as /api/imports/run
    if not request.is_json:
        abort(400, message="the request body must be JSON (Content-Type: application/json)")
    if request.get_json(silent=True) is None:
        abort(400, message="the request body is not valid JSON")


def as_stored(representation: dict) -> Response:
    """A stored representation (a version row's `data`), sent as it was serialised then."""
    response = jsonify(representation)
    response.headers["ETag"] = etag_for(representation["id"], representation["version"])
    return response
