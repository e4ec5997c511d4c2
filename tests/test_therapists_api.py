"""The therapist REST API (SPEC §5, §6.2) end to end: HTTP in, real PostgreSQL underneath."""
from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from conftest import AUTH, OTHER_TOKEN, SAMPLES
from helpers import assert_problem, at_param, instant_between_writes, pointers

OTHER_AUTH = {"Authorization": f"Bearer {OTHER_TOKEN}"}


def therapist_body(**overrides):
    body = {
        "external_id": "praxis67",
        "last_modified": "2025-07-02T03:13:24.425333",
        "basic_info": {"salutation": "Herr", "title": "Dipl.-Psych.", "first_name": "Thomas",
                       "last_name": "Zeevaert"},
        "location": {"street": "Theaterstraße", "house_number": "44", "postcode": "52062", "city": "Aachen"},
        "contact": {"phone": "0241 4001234", "email": "praxis67@example.de", "fax": None,
                    "website": "https://praxis67.example.de"},
        "professional_info": {"license": "Psychologischer Psychotherapeut",
                              "therapy_methods": ["Verhaltenstherapie"], "languages": ["Deutsch", "Englisch"],
                              "insurance": ["gesetzlich", "privat"]},
        "availability": {"telephone_hours": {"montag": ["08:00-08:50"]}, "accepts_new_patients": True,
                         "waiting_time_weeks": 12},
    }
    body.update(overrides)
    return body


def scraped_therapists():
    """The scraper's sample file, each therapist as a POST body: `id` → `external_id`, no `status`."""
    document = json.loads((SAMPLES / "therapist-folder" / "52074.json").read_text(encoding="utf-8"))
    bodies = []
    for scraped in document["therapists"]:
        body = {k: v for k, v in scraped.items() if k not in ("id", "status")}
        bodies.append({"external_id": scraped["id"], **body})
    return bodies


def create(client, headers=AUTH, **overrides):
    response = client.post("/api/therapists", json=therapist_body(**overrides), headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# ---- create and read ---------------------------------------------------------------------------

def test_create_gives_201_with_location_etag_and_the_stored_therapist(therapist_client):
    response = therapist_client.post("/api/therapists", json=therapist_body(), headers=AUTH)

    assert response.status_code == 201
    body = response.get_json()
    assert response.headers["Location"] == f"/api/therapists/{body['id']}"
    assert response.headers["ETag"] == f'"{body["id"]}.1"'
    assert body["external_id"] == "praxis67"
    assert body["last_modified"] == "2025-07-02T03:13:24.425333+00:00"  # no zone: UTC
    assert body["deleted_at"] is None and body["version"] == 1
    for group in ("basic_info", "location", "contact", "professional_info", "availability"):
        assert body[group] == therapist_body()[group], group


def test_location_of_created_therapist_reads_it_back_with_the_same_etag(therapist_client):
    created = therapist_client.post("/api/therapists", json=therapist_body(), headers=AUTH)

    read = therapist_client.get(created.headers["Location"], headers=AUTH)

    assert read.status_code == 200
    assert read.get_json() == created.get_json()
    assert read.headers["ETag"] == created.headers["ETag"]


def test_every_scraped_sample_therapist_is_a_valid_post_body(therapist_client):
    for scraped in scraped_therapists():
        response = therapist_client.post("/api/therapists", json=scraped, headers=AUTH)

        assert response.status_code == 201, (scraped["external_id"], response.get_json())
        assert response.get_json()["external_id"] == scraped["external_id"]
        assert response.get_json()["basic_info"]["last_name"] == scraped["basic_info"]["last_name"]


def test_sample_therapist_52074_first_entry_is_stored_as_scraped(therapist_client):
    scraped = scraped_therapists()[0]

    body = therapist_client.post("/api/therapists", json=scraped, headers=AUTH).get_json()

    assert body["external_id"] == scraped["external_id"]
    for group in ("basic_info", "location", "contact", "professional_info", "availability"):
        assert body[group] == scraped[group], group


def test_therapist_created_by_hand_needs_only_first_and_last_name(therapist_client):
    response = therapist_client.post("/api/therapists", json={"basic_info": {"first_name": "Anna", "last_name": "Becker"}},
                                     headers=AUTH)

    assert response.status_code == 201
    body = response.get_json()
    assert body["external_id"] is None and body["last_modified"] is None
    assert body["location"] == {"street": None, "house_number": None, "postcode": None, "city": None}
    assert body["professional_info"]["therapy_methods"] == []
    assert body["availability"]["telephone_hours"] == {}


def test_null_groups_are_read_as_empty_groups(therapist_client):
    response = therapist_client.post("/api/therapists", json=therapist_body(contact=None, location=None), headers=AUTH)

    assert response.status_code == 201
    assert response.get_json()["contact"] == {"phone": None, "email": None, "fax": None, "website": None}


def test_duplicate_external_id_gives_409_with_existing_id(therapist_client):
    existing = create(therapist_client)

    response = therapist_client.post("/api/therapists", json=therapist_body(
        basic_info={"first_name": "Other", "last_name": "Person"}), headers=AUTH)

    body = assert_problem(response, 409)
    assert body["type"] == "duplicate"
    assert body["existing_id"] == existing["id"]


def test_therapists_without_external_id_are_never_duplicates(therapist_client):
    for _ in range(2):
        assert therapist_client.post("/api/therapists", json=therapist_body(external_id=None),
                                     headers=AUTH).status_code == 201


def test_get_unknown_therapist_gives_404_problem(therapist_client):
    assert assert_problem(therapist_client.get("/api/therapists/999", headers=AUTH), 404)["type"] == "not-found"


# ---- list --------------------------------------------------------------------------------------

@pytest.fixture
def three_therapists(therapist_client):
    def practice(external_id, last_name, postcode, city, methods):
        return create(therapist_client, external_id=external_id,
                      basic_info={"first_name": "Vorname", "last_name": last_name},
                      location={"postcode": postcode, "city": city},
                      professional_info={"therapy_methods": methods})

    return [
        practice("p1", "Zeevaert", "52062", "Aachen", ["Verhaltenstherapie"]),
        practice("p2", "Becker", "52062", "Aachen", ["Systemische Therapie", "Verhaltenstherapie"]),
        practice("p3", "Zeevaert", "50667", "Köln", ["Analytische Psychotherapie"]),
    ]


@pytest.mark.parametrize("query, expected", [
    ("external_id=p2", ["p2"]),
    ("postcode=52062", ["p1", "p2"]),
    ("city=aachen", ["p1", "p2"]),
    ("city=K%C3%B6ln", ["p3"]),
    ("last_name=ZEEVAERT", ["p1", "p3"]),
    ("therapy_method=Verhaltenstherapie", ["p1", "p2"]),
    ("therapy_method=Systemische%20Therapie", ["p2"]),
    ("last_name=zeevaert&postcode=52062", ["p1"]),
    ("", ["p1", "p2", "p3"]),
])
def test_list_filters_by_the_named_fields(therapist_client, three_therapists, query, expected):
    response = therapist_client.get(f"/api/therapists?{query}", headers=AUTH)

    assert response.status_code == 200
    assert [t["external_id"] for t in response.get_json()] == expected


def test_list_leaves_out_deleted_therapists_unless_include_deleted(therapist_client, three_therapists):
    deleted = three_therapists[1]
    therapist_client.delete(f"/api/therapists/{deleted['id']}", headers=AUTH)

    default = therapist_client.get("/api/therapists", headers=AUTH).get_json()
    everything = therapist_client.get("/api/therapists?include_deleted=true", headers=AUTH).get_json()

    assert [t["external_id"] for t in default] == ["p1", "p3"]
    assert [t["external_id"] for t in everything] == ["p1", "p2", "p3"]
    assert everything[1]["deleted_at"] is not None
    assert json.loads(therapist_client.get("/api/therapists?include_deleted=true", headers=AUTH)
                      .headers["X-Pagination"])["total"] == 3


def test_list_pagination_header_is_exactly_total_page_page_size_total_pages(therapist_client, three_therapists):
    response = therapist_client.get("/api/therapists?page=2&page_size=2", headers=AUTH)

    assert [t["external_id"] for t in response.get_json()] == ["p3"]
    assert json.loads(response.headers["X-Pagination"]) == {"total": 3, "page": 2, "page_size": 2, "total_pages": 2}


def test_list_page_size_over_100_gives_422_naming_the_parameter(therapist_client):
    body = assert_problem(therapist_client.get("/api/therapists?page_size=101", headers=AUTH), 422)

    assert [e["parameter"] for e in body["errors"]] == ["page_size"]


@pytest.mark.parametrize("query, parameter", [
    ("postcode=5206", "postcode"),
    ("include_deleted=vielleicht", "include_deleted"),
    ("page=0", "page"),
])
def test_list_with_malformed_query_gives_422_naming_the_parameter(therapist_client, query, parameter):
    body = assert_problem(therapist_client.get(f"/api/therapists?{query}", headers=AUTH), 422)

    assert [e["parameter"] for e in body["errors"]] == [parameter]


# ---- replace, latest wins ----------------------------------------------------------------------

def test_put_with_newer_last_modified_replaces_the_therapist(therapist_client):
    therapist = create(therapist_client)
    newer = therapist_body(last_modified="2025-07-09T03:00:00",
                           availability={"accepts_new_patients": False, "waiting_time_weeks": 20})

    response = therapist_client.put(f"/api/therapists/{therapist['id']}", json=newer, headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert body["version"] == 2
    assert body["last_modified"] == "2025-07-09T03:00:00+00:00"
    assert body["availability"] == {"telephone_hours": {}, "accepts_new_patients": False, "waiting_time_weeks": 20}
    assert response.headers["ETag"] == f'"{therapist["id"]}.2"'


@pytest.mark.parametrize("last_modified", ["2025-07-02T03:13:24.425333", "2025-07-02T05:13:24.425333+02:00",
                                           "2025-07-01T00:00:00"])
def test_put_with_older_or_equal_last_modified_gives_409_stale_update(therapist_client, last_modified):
    therapist = create(therapist_client)
    changed = therapist_body(last_modified=last_modified, location={"city": "Köln"})

    response = therapist_client.put(f"/api/therapists/{therapist['id']}", json=changed, headers=AUTH)

    body = assert_problem(response, 409)
    assert body["type"] == "stale-update"
    assert therapist_client.get(f"/api/therapists/{therapist['id']}", headers=AUTH).get_json() == therapist


def test_put_with_older_last_modified_but_same_content_changes_nothing(therapist_client):
    therapist = create(therapist_client)

    response = therapist_client.put(f"/api/therapists/{therapist['id']}",
                                    json=therapist_body(last_modified="2020-01-01T00:00:00"), headers=AUTH)

    assert response.status_code == 200
    assert response.get_json() == therapist


def test_put_without_last_modified_is_a_hand_edit_that_keeps_the_source_timestamp(therapist_client):
    therapist = create(therapist_client)

    response = therapist_client.put(f"/api/therapists/{therapist['id']}",
                                    json=therapist_body(last_modified=None, location={"city": "Düren"}), headers=AUTH)

    assert response.status_code == 200
    assert response.get_json()["location"]["city"] == "Düren"
    assert response.get_json()["last_modified"] == therapist["last_modified"]


def test_put_with_another_therapists_external_id_gives_409_with_existing_id(therapist_client):
    first = create(therapist_client, external_id="p1")
    second = create(therapist_client, external_id="p2")

    response = therapist_client.put(f"/api/therapists/{second['id']}",
                                    json=therapist_body(external_id="p1", last_modified=None), headers=AUTH)

    body = assert_problem(response, 409)
    assert body["existing_id"] == first["id"]
    assert therapist_client.get(f"/api/therapists/{second['id']}", headers=AUTH).get_json() == second


def test_put_with_invalid_body_gives_422_with_nested_pointer(therapist_client):
    therapist = create(therapist_client)

    response = therapist_client.put(f"/api/therapists/{therapist['id']}", json=therapist_body(
        basic_info={"first_name": "Thomas", "last_name": "  "}), headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/basic_info/last_name"]


def test_put_of_unknown_therapist_gives_404(therapist_client):
    assert_problem(therapist_client.put("/api/therapists/999", json=therapist_body(), headers=AUTH), 404)


# ---- patch -------------------------------------------------------------------------------------

def test_patch_merges_a_group_key_by_key_and_leaves_other_groups_alone(therapist_client):
    therapist = create(therapist_client)

    response = therapist_client.patch(f"/api/therapists/{therapist['id']}",
                                      json={"basic_info": {"title": "Dr."}}, headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert body["basic_info"] == {**therapist["basic_info"], "title": "Dr."}
    for group in ("location", "contact", "professional_info", "availability"):
        assert body[group] == therapist[group], group
    assert body["external_id"] == therapist["external_id"]
    assert body["last_modified"] == therapist["last_modified"]
    assert body["version"] == 2


def test_patch_replaces_a_list_inside_a_group_and_keeps_its_siblings(therapist_client):
    therapist = create(therapist_client)

    body = therapist_client.patch(f"/api/therapists/{therapist['id']}",
                                  json={"professional_info": {"languages": ["Türkisch"]}}, headers=AUTH).get_json()

    assert body["professional_info"]["languages"] == ["Türkisch"]
    assert body["professional_info"]["insurance"] == ["gesetzlich", "privat"]


def test_patch_with_unknown_key_in_a_group_gives_422_with_nested_pointer(therapist_client):
    therapist = create(therapist_client)

    response = therapist_client.patch(f"/api/therapists/{therapist['id']}",
                                      json={"basic_info": {"nickname": "Tom"}}, headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/basic_info/nickname"]


def test_patch_with_stale_last_modified_gives_409_stale_update(therapist_client):
    therapist = create(therapist_client)

    response = therapist_client.patch(f"/api/therapists/{therapist['id']}",
                                      json={"last_modified": "2024-01-01T00:00:00", "location": {"city": "Köln"}},
                                      headers=AUTH)

    assert assert_problem(response, 409)["type"] == "stale-update"


# ---- delete, history, as-of --------------------------------------------------------------------

def test_delete_gives_204_and_later_reads_give_410(therapist_client):
    therapist = create(therapist_client)

    response = therapist_client.delete(f"/api/therapists/{therapist['id']}", headers=AUTH)

    assert response.status_code == 204
    assert assert_problem(therapist_client.get(f"/api/therapists/{therapist['id']}", headers=AUTH), 410)["type"] == "gone"


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_writes_to_a_deleted_therapist_give_410(therapist_client, method):
    therapist = create(therapist_client)
    therapist_client.delete(f"/api/therapists/{therapist['id']}", headers=AUTH)

    response = getattr(therapist_client, method)(f"/api/therapists/{therapist['id']}",
                                                 json=therapist_body(last_modified=None), headers=AUTH)

    assert_problem(response, 410)


def test_deleted_therapist_keeps_its_external_id(therapist_client):
    therapist = create(therapist_client)
    therapist_client.delete(f"/api/therapists/{therapist['id']}", headers=AUTH)

    response = therapist_client.post("/api/therapists", json=therapist_body(), headers=AUTH)

    assert assert_problem(response, 409)["existing_id"] == therapist["id"]


def test_history_lists_every_version_newest_first_with_source_and_acting_token(therapist_client):
    therapist = create(therapist_client)
    url = f"/api/therapists/{therapist['id']}"
    therapist_client.patch(url, json={"location": {"city": "Köln"}}, headers=OTHER_AUTH)
    therapist_client.delete(url, headers=AUTH)

    response = therapist_client.get(f"{url}/history", headers=AUTH)

    assert response.status_code == 200
    versions = response.get_json()
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert [v["actor"] for v in versions] == ["tests", "other", "tests"]
    assert {v["source"] for v in versions} == {"api"}
    assert versions[0]["data"]["deleted_at"] is not None
    assert versions[1]["data"]["location"]["city"] == "Köln"
    assert versions[2]["data"] == therapist


def test_history_of_unknown_therapist_gives_404(therapist_client):
    assert_problem(therapist_client.get("/api/therapists/999/history", headers=AUTH), 404)


def test_get_at_an_earlier_time_returns_the_state_then(therapist_client):
    therapist = create(therapist_client)
    noted = instant_between_writes()
    therapist_client.patch(f"/api/therapists/{therapist['id']}", json={"location": {"city": "Köln"}}, headers=AUTH)

    then = therapist_client.get(f"/api/therapists/{therapist['id']}?at={at_param(noted)}", headers=AUTH)

    assert then.status_code == 200
    assert then.get_json() == therapist
    assert then.headers["ETag"] == f'"{therapist["id"]}.1"'


def test_get_at_a_time_before_creation_gives_404(therapist_client):
    before = datetime.now(UTC) - timedelta(hours=1)
    therapist = create(therapist_client)

    assert_problem(therapist_client.get(f"/api/therapists/{therapist['id']}?at={at_param(before)}", headers=AUTH), 404)


def test_get_at_a_time_after_deletion_gives_410(therapist_client):
    therapist = create(therapist_client)
    therapist_client.delete(f"/api/therapists/{therapist['id']}", headers=AUTH)
    after = instant_between_writes()

    assert_problem(therapist_client.get(f"/api/therapists/{therapist['id']}?at={at_param(after)}", headers=AUTH), 410)


# ---- If-Match ----------------------------------------------------------------------------------

WRITES = {
    "put": lambda c, url, h: c.put(url, json=therapist_body(last_modified=None, location={"city": "Köln"}), headers=h),
    "patch": lambda c, url, h: c.patch(url, json={"location": {"city": "Köln"}}, headers=h),
    "delete": lambda c, url, h: c.delete(url, headers=h),
}


@pytest.mark.parametrize("method", WRITES)
def test_if_match_with_the_current_etag_lets_the_write_through(therapist_client, method):
    created = therapist_client.post("/api/therapists", json=therapist_body(), headers=AUTH)

    response = WRITES[method](therapist_client, created.headers["Location"], {**AUTH, "If-Match": created.headers["ETag"]})

    assert response.status_code in (200, 204)


@pytest.mark.parametrize("method", WRITES)
def test_if_match_with_an_outdated_etag_gives_412(therapist_client, method):
    created = therapist_client.post("/api/therapists", json=therapist_body(), headers=AUTH)
    url = created.headers["Location"]
    therapist_client.patch(url, json={"basic_info": {"title": "Dr."}}, headers=AUTH)

    response = WRITES[method](therapist_client, url, {**AUTH, "If-Match": created.headers["ETag"]})

    assert assert_problem(response, 412)["type"] == "precondition-failed"
    assert therapist_client.get(url, headers=AUTH).get_json()["version"] == 2


@pytest.mark.parametrize("method", WRITES)
def test_if_match_star_lets_the_write_through(therapist_client, method):
    created = therapist_client.post("/api/therapists", json=therapist_body(), headers=AUTH)

    response = WRITES[method](therapist_client, created.headers["Location"], {**AUTH, "If-Match": "*"})

    assert response.status_code in (200, 204)


# ---- validation, HTTP errors, authentication ---------------------------------------------------

@pytest.mark.parametrize("change, pointer", [
    ({"basic_info": {"first_name": "Thomas"}}, "/basic_info/last_name"),
    ({"location": {"postcode": "5206"}}, "/location/postcode"),
    ({"contact": {"email": "keine-adresse"}}, "/contact/email"),
    ({"professional_info": {"insurance": ["beihilfe"]}}, "/professional_info/insurance/0"),
    ({"availability": {"waiting_time_weeks": -1}}, "/availability/waiting_time_weeks"),
    ({"availability": {"accepts_new_patients": "ja"}}, "/availability/accepts_new_patients"),
    ({"last_modified": "letzte Woche"}, "/last_modified"),
    ({"status": "modified"}, "/status"),
    ({"id": "praxis67"}, "/id"),
])
def test_invalid_field_gives_422_problem_with_pointer(therapist_client, change, pointer):
    response = therapist_client.post("/api/therapists", json=therapist_body(**change), headers=AUTH)

    body = assert_problem(response, 422)
    assert body["type"] == "validation-error"
    assert pointers(response) == [pointer]


def test_missing_basic_info_gives_422_with_pointer(therapist_client):
    body = therapist_body()
    del body["basic_info"]

    response = therapist_client.post("/api/therapists", json=body, headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/basic_info"]


def test_unknown_nested_field_gives_422_with_nested_pointer(therapist_client):
    body = copy.deepcopy(therapist_body())
    body["location"]["district"] = "Mitte"

    response = therapist_client.post("/api/therapists", json=body, headers=AUTH)

    assert_problem(response, 422)
    assert pointers(response) == ["/location/district"]


def test_body_that_is_not_json_gives_400_problem(therapist_client):
    response = therapist_client.post("/api/therapists", data="<therapist/>", content_type="application/xml", headers=AUTH)

    assert_problem(response, 400)


def test_body_over_max_request_bytes_gives_413_problem(make_app):
    client = make_app("therapist", MAX_REQUEST_BYTES=500).test_client()

    assert_problem(client.post("/api/therapists", json=therapist_body(), headers=AUTH), 413)


def test_unknown_route_gives_404_and_wrong_method_405_problem(therapist_client):
    assert_problem(therapist_client.get("/api/therapeuten", headers=AUTH), 404)
    assert_problem(therapist_client.put("/api/therapists", json={}, headers=AUTH), 405)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer no-such-token-0123456789"}])
def test_missing_or_wrong_token_gives_401_with_www_authenticate_bearer(therapist_client, headers):
    for response in (therapist_client.get("/api/therapists", headers=headers),
                     therapist_client.post("/api/therapists", json=therapist_body(), headers=headers)):
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_openapi_and_docs_need_no_token(therapist_client):
    for path in ("/health", "/api/openapi.json", "/api/docs"):
        assert therapist_client.get(path).status_code == 200, path


def test_docs_page_assets_are_served_locally(therapist_client):
    html = therapist_client.get("/api/docs").get_data(as_text=True)
    bundle = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', html).group(1)

    assert bundle.startswith("/")
    assert therapist_client.get(bundle).status_code == 200
