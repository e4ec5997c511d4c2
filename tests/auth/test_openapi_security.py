"""The OpenAPI document says what each operation needs (SPEC §11): `bearer` and, with an issuer,
`oidc` security schemes; per operation the scope on `oidc` and in `x-required-scopes`, and 401
and 403 documented."""
from __future__ import annotations

import pytest

ISSUER = "https://login.example.org/realms/curavani"


def operations(doc):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method.upper(), path, operation


@pytest.mark.parametrize("service", ["patient", "therapist"])
def test_every_operation_names_its_scope_for_oidc_and_static_tokens(make_app, service):
    app = make_app(service, OIDC_ISSUER=ISSUER, OIDC_AUDIENCE="curavani-api")
    doc = app.test_client().get("/api/openapi.json").get_json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    assert schemes["oidc"] == {"type": "openIdConnect",
                               "openIdConnectUrl": f"{ISSUER}/.well-known/openid-configuration"}
    found = list(operations(doc))
    assert len(found) > 10
    for method, path, operation in found:
        scopes = operation["x-required-scopes"]
        assert scopes, (method, path)
        assert operation["security"] == [{"oidc": scopes}, {"bearer": []}], (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
    by_operation = {(m, p): o["x-required-scopes"] for m, p, o in found}
    if service == "patient":
        assert by_operation[("GET", "/api/patients/{patient_id}/export")] == ["patients:export"]
    else:
        assert by_operation[("POST", "/api/appointments")] == ["appointments:write"]


def test_without_an_issuer_there_is_no_oidc_scheme_to_name(make_app):
    doc = make_app("therapist").test_client().get("/api/openapi.json").get_json()
    assert set(doc["components"]["securitySchemes"]) == {"bearer"}
    for method, path, operation in operations(doc):
        assert operation["security"] == [{"bearer": []}], (method, path)
        assert operation["x-required-scopes"]
