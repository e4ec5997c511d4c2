"""Files the therapist importer must refuse as a whole (SPEC §7.2.1, §7.2.4), and files it must
not even look at. A refused file gets a failed record with a specific error, one alert, and no
therapist is written; the importer keeps running and takes the next good file."""
from __future__ import annotations

import copy

import pytest

from .support import (
    SAMPLE,
    all_therapists,
    drop,
    drop_barrier,
    encode,
    imports,
    imports_of,
    sample_document,
    scrape,
    therapist,
    wait_for_import,
)


def _sample_bytes() -> bytes:
    return SAMPLE.read_bytes()


def _latin1() -> bytes:
    return encode(sample_document()).decode("utf-8").encode("latin-1", errors="replace")


def _with_last_entry_license(raw: bytes) -> bytes:
    """The sample with `raw` (bytes as they are) for the last therapist's license: deep inside an
    entry, where the importer reads it only when it loads the entry."""
    document = sample_document()
    document["therapists"][-1]["professional_info"]["license"] = "LICENSE-HERE"
    return encode(document).replace(b'"LICENSE-HERE"', raw)


def _with_top_level_member(raw: bytes) -> bytes:
    """The sample with one more top-level member, `raw` as it is: a member the importer skips."""
    document = {"scraped_by": "SCRAPER-HERE", **sample_document()}
    return encode(document).replace(b'"SCRAPER-HERE"', raw)


def _top_level_list() -> bytes:
    return encode(sample_document()["therapists"])


def _without_therapists() -> bytes:
    return encode({"metadata": sample_document()["metadata"]})


def _item_not_an_object() -> bytes:
    document = sample_document()
    document["therapists"][2] = "praxis69"
    return encode(document)


def _duplicate_ids() -> bytes:
    document = sample_document()
    twin = copy.deepcopy(document["therapists"][0])
    document["therapists"].append(twin)
    return encode(document)


# name, file content, error kind, words the detail must contain, extra settings
BAD_FILES = {
    "not-json": ("52074.json", lambda: b"therapists: [praxis67, praxis68]\n", "not-json", ["not valid JSON"], {}),
    "empty": ("52074.json", lambda: b"", "not-json", ["empty"], {}),
    "not-utf8": ("52074.json", _latin1, "not-utf8", ["not UTF-8", "offset"], {}),
    "truncated-between-values": ("52074.json", lambda: _sample_bytes()[:len(_sample_bytes()) // 2],
                                 "truncated", ["truncated"], {}),
    "truncated-inside-a-string": ("52074.json", lambda: _sample_bytes()[:_sample_bytes().index(b"Zeevaert") + 3],
                                  "truncated", ["truncated"], {}),
    "truncated-inside-a-character": ("52074.json",
                                     lambda: _sample_bytes()[:_sample_bytes().index("Ayşe".encode()) + 3],
                                     "truncated", ["truncated"], {}),
    "not-utf8-inside-an-entry": ("52074.json", lambda: _with_last_entry_license(b'"Psycho\xfftherapeut"'),
                                 "not-utf8", ["not UTF-8", "offset"], {}),
    "infinite-number-inside-an-entry": ("52074.json", lambda: _with_last_entry_license(b"1e999"), "not-json",
                                        ["infinite"], {}),
    "not-utf8-in-another-top-level-member": ("52074.json", lambda: _with_top_level_member(b'"M\xfcller"'),
                                             "not-utf8", ["not UTF-8", "offset"], {}),
    "infinite-number-in-another-top-level-member": ("52074.json", lambda: _with_top_level_member(b"1e999"),
                                                    "not-json", ["infinite"], {}),
    "top-level-list": ("52074.json", _top_level_list, "wrong-shape", ['"therapists" list'], {}),
    "no-therapists-list": ("52074.json", _without_therapists, "wrong-shape", ['"therapists" list'], {}),
    "too-large": ("52074.json", _sample_bytes, "too-large", ["bytes", "IMPORT_MAX_FILE_BYTES"],
                  {"IMPORT_MAX_FILE_BYTES": 2048}),
    "item-not-an-object": ("52074.json", _item_not_an_object, "wrong-shape", ["therapist 2", "not an object"], {}),
    "duplicate-ids": ("52074.json", _duplicate_ids, "duplicate-ids", ["praxis67"], {}),
    "name-not-a-postcode": ("praxen-aachen.json", _sample_bytes, "bad-name", ["5-digit postcode"], {}),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_file_fails_as_a_whole_with_a_specific_error_and_one_alert(case, inbox, start_importer,
                                                                                smtp_server):
    name, content, kind, words, settings = BAD_FILES[case]
    app = start_importer(**settings)
    client = app.test_client()

    drop(inbox, name, content())
    record = wait_for_import(client, name)

    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["next_attempt_at"] is None  # the same content would fail the same way: no retries
    [error] = record["errors"]
    assert error["kind"] == kind
    for word in words:
        assert word in error["detail"]
    assert all(value == 0 for value in record["counts"].values())
    assert all_therapists(client) == []
    [mail] = smtp_server.wait_for(1)
    assert mail["Subject"] == f"[therapist_service] import failed: #{record['id']}"

    # The importer keeps running: the next good file is imported, and no second alert came.
    good = scrape(therapist("after-the-bad-one", "new"))
    drop(inbox, "52062.json", good)
    assert wait_for_import(client, "52062.json")["status"] == "succeeded"
    assert [t["external_id"] for t in all_therapists(client)] == ["after-the-bad-one"]
    assert len(smtp_server.messages) == 1
    assert [r["id"] for r in imports_of(client, name)] == [record["id"]]


def test_byte_order_mark_is_accepted(inbox, client):
    drop(inbox, "52074.json", b"\xef\xbb\xbf" + SAMPLE.read_bytes())

    record = wait_for_import(client)

    assert record["status"] == "succeeded"
    assert record["counts"]["created"] == 4


def test_writer_temporaries_and_hidden_files_are_ignored(inbox, client, smtp_server):
    payload = SAMPLE.read_bytes()
    ignored = ["52074.json.tmp", "52074.json.part", ".52074.json", ".staging/52074.json", "52074.JSON.bak"]
    for name in ignored:
        drop(inbox, name, payload)

    drop_barrier(inbox, client)

    assert [r["name"] for r in imports(client)] == ["99999.json"]
    assert all_therapists(client) == []
    assert smtp_server.messages == []

